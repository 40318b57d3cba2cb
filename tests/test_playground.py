"""The playground page at `/`, driven in a real headless Chromium (Debian's) with Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ARTIFACTS, ServerProcess, start_server
from tests.test_cli import WEAK_VERDICT

CHROMIUM = Path("/usr/bin/chromium")
ANTONYMS = "hot -> cold\nbig -> small\nfast -> slow\nup -> down\nday -> night\nin -> out\nopen -> closed\n"
UPPERCASE = '{"input": "cat", "output": "CAT"}\n{"input": "dog", "output": "DOG"}\n{"input": "sun", "output": "SUN"}\n'
TIMEOUT_MS = 60_000

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One open server on the tiny model for the tests that need no API key."""
    folder = tmp_path_factory.mktemp("playground-server")
    proc = start_server({"STEER_MODEL": "tiny:llama", "STEER_DATA_DIR": str(folder / "data")}, folder / "server.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/test-deps.sh installs it)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1440, "height": 960}, device_scale_factor=1)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def register(page, demos: str, name: str, method: str = "task_vector") -> None:
    page.fill("#demos", demos)
    page.fill("#task-name", name)
    page.select_option("#method", method)
    page.click("#register")
    row = page.locator("li.task", has=page.locator(".task-name", has_text=name))
    expect(row.locator(".badge")).to_have_text("ready")


def test_page_and_assets_are_served(server: ServerProcess) -> None:
    """Without a browser: `/` is the page, its script and style come from /static, nothing from the network."""
    page = httpx.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text and "/static/style.css" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = httpx.get(f"{server.url}/static/{asset}", timeout=30)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "https://" not in response.text


def open_with_tasks_loaded(page, server: ServerProcess) -> None:
    """Open the page and wait until its first task list has arrived and no poll is pending.

    A task injected with `updateTask` before then is removed by that list, which does not hold it.
    """
    page.goto(server.url + "/")
    expect(page.locator("#server-info")).to_contain_text("ready")
    page.wait_for_function("() => state.loaded && state.pollTimer === null")


def answer(page, column: str):
    return page.locator(f"#out-{column} .answer").first


def wait_settled(page) -> None:
    page.wait_for_function("!document.querySelector('.result.busy')")


@pytest.mark.browser
def test_playground_end_to_end(server: ServerProcess, page) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#server-info")).to_contain_text("tiny:llama")
    expect(page.locator("#method")).to_have_value("auto")  # the default method
    expect(page.locator("#auth")).to_be_hidden()
    page.fill("#demos", ANTONYMS)
    expect(page.locator("#demo-count")).to_have_text("7 demonstrations")

    register(page, ANTONYMS, "antonyms")
    row = page.locator("li.task").first
    expect(row.locator("input[type=checkbox]")).to_be_checked()  # a task registered here is ticked once ready
    # The card shows the server's verdict on the vector, and its layers as ranges.
    info = httpx.get(f"{server.url}/v1/tasks/{row.get_attribute('data-id')}", timeout=30).json()
    assert info["verdict"] is not None and info["answer_end"] is not None
    verdict = row.locator(".verdict")
    expect(verdict).to_be_visible()
    expect(verdict).to_have_class(f"verdict rating-{info['verdict']['rating']}")
    expect(verdict.locator(".verdict-summary")).to_have_text(info["verdict"]["summary"])
    expect(verdict.locator(".vbar.steered .vbar-value")).to_have_text(f"{round(info['verdict']['steered'] * 100)}%")
    expect(verdict.locator(".answer-end")).to_contain_text("answers end: stop")
    expect(row.locator(".task-sub")).to_contain_text(page.evaluate("(l) => formatLayers(l)", info["layers"]))

    page.fill("#query", "tall")
    page.fill("#max-tokens", "12")
    page.click("#generate")
    wait_settled(page)
    for column in ("zero", "few", "steered"):
        expect(answer(page, column)).not_to_be_empty()
    zero = answer(page, "zero").inner_text()

    # Strength 0 is the plain model: the steered column turns into the zero-shot answer.
    slider = row.locator("input[type=range]")
    slider.fill("0")
    expect(row.locator("output")).to_have_text("0.00")
    expect(answer(page, "steered")).to_have_text(zero)
    expect(page.locator("#steered-desc")).to_contain_text("antonyms @ 0.00")
    slider.fill("2")
    expect(row.locator("output")).to_have_text("2.00")
    expect(answer(page, "steered")).not_to_have_text(zero)  # on the tiny model, strength 2 changes the answer

    # A second task with its own slider; both steer at once.
    register(page, UPPERCASE, "uppercase")
    expect(page.locator("li.task")).to_have_count(2)
    expect(page.locator("li.task input[type=checkbox]:checked")).to_have_count(2)
    upper = page.locator("li.task", has=page.locator(".task-name", has_text="uppercase"))
    upper.locator("input[type=range]").fill("0.5")
    expect(page.locator("#steered-desc")).to_contain_text("uppercase @ 0.50")
    expect(page.locator("#steered-desc")).to_contain_text("antonyms @ 2.00")
    wait_settled(page)
    expect(page.locator("#out-few .answer-label")).to_have_count(2)  # one few-shot answer per task
    expect(answer(page, "steered")).not_to_be_empty()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)

    # Delete from the list: gone from the page and from the server.
    upper_id = upper.get_attribute("data-id")
    upper.locator("button.delete").click()
    expect(page.locator("li.task")).to_have_count(1)
    ids = [t["id"] for t in httpx.get(server.url + "/v1/tasks", timeout=30).json()["tasks"]]
    assert upper_id not in ids and len(ids) == 1


@pytest.mark.browser
def test_progress_is_shown(server: ServerProcess, page) -> None:
    open_with_tasks_loaded(page, server)
    # Render a running soft-injection task as the API reports it (stage/step/steps/loss).
    page.evaluate(
        """() => updateTask({id: "task-0123456789abcdef", status: "running", method: "soft_injection",
            name: "training", num_demonstrations: 12, layers: null, default_strength: null, template: null,
            progress: {stage: "training", step: 40, steps: 120, loss: 1.23456}})"""
    )
    row = page.locator("li.task", has=page.locator(".task-name", has_text="training"))
    expect(row.locator(".badge")).to_have_text("running")
    expect(row.locator(".progress-text")).to_have_text("training · step 40/120 · loss 1.2346")
    expect(row.locator(".strength")).to_be_hidden()
    assert row.locator(".bar span").evaluate("el => el.style.width") == "33%"


@pytest.mark.browser
def test_the_method_menu_shows_its_options_in_full(server: ServerProcess, page) -> None:
    """The closed menu is at least as wide as the browser makes a menu that fits its longest option."""
    page.goto(server.url + "/")
    options = page.locator("#method option").all_inner_texts()
    assert "auto (recommended)" in options
    widths = page.evaluate(
        """() => {
            const menu = document.querySelector("#method");
            const fitted = menu.cloneNode(true);  // same options, same CSS, sized by its content
            fitted.removeAttribute("id");
            Object.assign(fitted.style, {width: "auto", position: "absolute", visibility: "hidden"});
            menu.parentElement.appendChild(fitted);
            const needed = fitted.getBoundingClientRect().width;
            fitted.remove();
            return {needed, shown: menu.getBoundingClientRect().width};
        }"""
    )
    assert widths["shown"] >= widths["needed"], widths


@pytest.mark.browser
def test_layers_are_written_as_ranges(server: ServerProcess, page) -> None:
    page.goto(server.url + "/")
    cases = [
        ([0, 1, 2, 3, 7, 9, 10, 11], "0-3, 7, 9-11"),
        (list(range(30)), "0-29"),
        ([5], "5"),
        ([4, 5], "4-5"),
        ([11, 3, 10, 2, 3], "2-3, 10-11"),  # in order, each once
        ([0, 2, 4], "0, 2, 4"),
        ([], ""),
    ]
    for layers, expected in cases:
        assert page.evaluate("(l) => formatLayers(l)", layers) == expected, layers


@pytest.mark.browser
def test_few_shot_answers_end_as_the_server_ends_them(server: ServerProcess, page) -> None:
    """The page cuts few-shot answers with a task's learned rule exactly where tasks/answer_end.py cuts them."""
    from steering.tasks.answer_end import AnswerEnd

    page.goto(server.url + "/")
    rules = [
        AnswerEnd(stop=["\n"], delimiters=[",", ".", " -"], max_words=1, max_tokens=10),
        AnswerEnd(stop=["\n\n"], delimiters=[";"], max_words=3, max_chars=None),
        AnswerEnd(stop=["\n"], max_chars=1),
        AnswerEnd(),
    ]
    texts = [" apple, pear, plum", " cold\nQ: warm", "  New York City is big", "B and C", "", "   ", "a - b", "x;y z"]
    for rule in rules:
        for text in texts:
            got = page.evaluate("([t, r]) => cutAnswer(t, r)", [text, rule.model_dump()])
            assert got == rule.apply(text), (rule, text)


WEAK_TASK = {
    "id": "task-0123456789abcdef01234567",
    "status": "ready",
    "method": "icv",
    "name": "a task whose name goes on and on " * 4,
    "num_demonstrations": 40,
    "layers": list(range(30)),
    "default_strength": 0.4,
    "template": None,
    "metrics": {"dev_steered_accuracy": 0.25},
    "verdict": {**WEAK_VERDICT, "advice": WEAK_VERDICT["advice"] + " " + "averyverylongunbrokenwordthatmustwrap" * 4},
    "answer_end": {
        "stop": ["\n"],
        "delimiters": [",", ";", ".", "!", "?", ":", "(", ")", "[", "]", '"', "|", " -", "="],
        "max_words": 1,
        "max_chars": None,
        "max_tokens": 10,
    },
}


@pytest.mark.browser
def test_verdict_on_the_card(server: ServerProcess, page) -> None:
    """A weak vector's card: rating, steered / 10-shot / zero-shot, advice, layers `0-29`, nothing overflowing."""
    open_with_tasks_loaded(page, server)
    page.evaluate("(info) => updateTask(info)", WEAK_TASK)
    row = page.locator(f"li.task[data-id='{WEAK_TASK['id']}']")
    verdict = row.locator(".verdict")
    expect(verdict).to_be_visible()
    expect(verdict).to_have_class("verdict rating-below_few_shot")
    expect(verdict.locator(".verdict-label")).to_have_text("below 10-shot")
    expect(verdict.locator(".verdict-measure")).to_have_text("exact match, 10 held out, ±37 points")
    for condition, name, value, width in (
        ("steered", "steered", "20%", "20%"),
        ("few", "10-shot", "60%", "60%"),
        ("zero", "zero-shot", "0%", "0%"),
    ):
        bar = verdict.locator(f".vbar.{condition}")
        expect(bar.locator(".vbar-name")).to_have_text(name)
        expect(bar.locator(".vbar-value")).to_have_text(value)
        assert bar.locator(".vbar-fill").evaluate("el => el.style.width") == width
    expect(verdict.locator(".verdict-summary")).to_have_text(WEAK_TASK["verdict"]["summary"])
    expect(verdict.locator(".verdict-advice")).to_have_text(WEAK_TASK["verdict"]["advice"])
    expect(verdict.locator(".answer-end")).to_have_text(
        'answers end: stop "\\n" · at , ; . ! ? : ( ) [ ] " | " -" = · max 1 word · max 10 tokens'
    )
    expect(row.locator(".task-sub")).to_contain_text("icv · layers 0-29 · 40 demos")
    expect(row.locator(".task-sub")).not_to_contain_text("0,1")
    expect(row.locator(".task-sub")).not_to_contain_text("dev acc")  # the verdict says it better
    # Nothing spills out of the card or the task list.
    for selector in (f"li.task[data-id='{WEAK_TASK['id']}']", "#tasks"):
        sizes = page.locator(selector).evaluate("el => [el.scrollWidth, el.clientWidth]")
        assert sizes[0] <= sizes[1], (selector, sizes)
    card = row.bounding_box()
    for part in (".verdict", ".verdict-advice", ".answer-end", ".task-sub", ".task-head"):
        box = row.locator(part).bounding_box()
        assert box["x"] + box["width"] <= card["x"] + card["width"] + 0.5, part
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    row.screenshot(path=str(ARTIFACTS / "playground-verdict.png"))

    # A strong vector: its own colour, no advice; a task still computing shows no verdict yet.
    strong = {
        **WEAK_TASK,
        "verdict": {**WEAK_TASK["verdict"], "rating": "better_than_few_shot", "steered": 0.9, "advice": None},
        "layers": [3],
    }
    page.evaluate("(info) => updateTask(info)", strong)
    expect(verdict).to_have_class("verdict rating-better_than_few_shot")
    expect(verdict.locator(".verdict-label")).to_have_text("better than 10-shot")
    expect(verdict.locator(".vbar.steered .vbar-value")).to_have_text("90%")
    expect(verdict.locator(".verdict-advice")).to_have_count(0)
    expect(row.locator(".task-sub")).to_contain_text("icv · layer 3 · 40 demos")
    page.evaluate("(info) => updateTask(info)", {**strong, "status": "running", "verdict": None, "answer_end": None})
    expect(verdict).to_be_hidden()


@pytest.mark.browser
def test_api_key_field_appears_on_401(server_factory, page) -> None:
    server = server_factory(STEER_API_KEYS="sesame")
    page.goto(server.url + "/")
    expect(page.locator("#auth")).to_be_visible()
    page.fill("#api-key", "wrong")
    page.click("#auth-form button")
    expect(page.locator("#auth-message")).to_have_text("That key was refused.")
    page.fill("#api-key", "sesame")
    page.click("#auth-form button")
    expect(page.locator("#tasks-empty")).to_be_visible()
    expect(page.locator("#auth-message")).to_have_text("")
    register(page, ANTONYMS, "keyed")
    tasks = httpx.get(server.url + "/v1/tasks", headers={"Authorization": "Bearer sesame"}, timeout=30).json()
    assert [t["name"] for t in tasks["tasks"]] == ["keyed"]
