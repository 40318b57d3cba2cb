"""Tasks as text: demonstrations and packaged datasets, prompt templates, where answers end, verdicts."""
