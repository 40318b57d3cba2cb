"""Task vectors and their files: the injection-mode table, the `TaskVector` format, strict readers, export."""
