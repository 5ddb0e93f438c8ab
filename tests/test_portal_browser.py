"""The portal in a real headless Chromium, against the real server and a real polling agent.

Sign in through the form, see the agent's machine as connected (live state from the polling
connection), run a Bash script through the form and watch its output arrive on the task page
through the page's own polling (no reload), then sign out. Screenshots go to the test's tmp dir.
CI (`.ci/run`) installs `chromium`; without it this test fails with the reason, it never skips.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.browser import Chromium, find_chromium, png_facts
from tests.test_portal import PASSWORD, World, make_world, serving


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args))


def _assert_picture(png: bytes) -> None:
    width, height, distinct = png_facts(png)
    assert (width, height) == (1280, 900)
    assert distinct > 40, "the screenshot is (nearly) blank"


async def test_sign_in_watch_the_agent_and_run_a_script(world: World, tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.fail("Chromium is not installed (apt-get install chromium chromium-driver; "
                    ".ci/run does this) — the portal's browser test needs it")
    with trio.fail_after(60):
        async with serving(world, agent=True, refresh_seconds=1) as server:
            browser = Chromium(tmp_path / "chromium", binary=binary)
            await run(browser.start)
            try:
                await _scenario(browser, world, server.node, tmp_path)
            finally:
                await run(browser.close)


async def _scenario(browser: Chromium, world: World, node: str, shots: Path) -> None:
    await run(browser.navigate, f"{world.origin}/app/")
    await run(browser.wait_for, "location.pathname === '/app/login' && "
                                "!!document.getElementById('username')")
    assert "Octopus comms" in await run(browser.evaluate, "document.title")
    _assert_picture(await run(browser.screenshot, shots / "portal-login.png"))
    await run(browser.fill, "#username", "alice")
    await run(browser.fill, "#password", PASSWORD)
    await run(browser.click, "#sign-in")

    # the machines page, with the polling agent's machine connected to this node
    connected = """(() => {
        const row = [...document.querySelectorAll('#machines tr[data-machine-id]')]
            .find((r) => r.querySelector('strong').textContent === 'web01');
        if (!row) return null;
        const state = row.querySelector('[data-field=state]').textContent.trim();
        return state === 'Connected' ? row.querySelector('[data-field=where]').textContent
                                     : null;
    })()"""
    where = await run(browser.wait_for, connected, 15)
    assert where.startswith(f"{node} · 127.0.0.1"), where
    assert "Machines · Octopus comms" == await run(browser.evaluate, "document.title")
    # the live refresh runs (the JSON endpoint answers the page's script)
    await run(browser.wait_for, "!!document.getElementById('machines').dataset.updated", 10)
    _assert_picture(await run(browser.screenshot, shots / "portal-machines.png"))

    # run a script through the form
    await run(browser.click, "nav a[href='/app/script']")
    await run(browser.wait_for, "!!document.getElementById('script-form')")
    await run(browser.click, "input[name=machine][value='Machines-1']")
    await run(browser.click, "input[name=syntax][value=Bash]")
    await run(browser.fill, "#description", "Portal browser test")
    await run(browser.fill, "#script",
              "sleep 1\r\necho portal says hello from $(hostname)\r\n"
              "for i in 1 2 3; do echo line-$i; sleep 0.2; done\r\necho '<b>not bold</b>'")
    _assert_picture(await run(browser.screenshot, shots / "portal-script.png"))
    await run(browser.click, "#run")
    path = await run(browser.wait_for, "/^\\/app\\/tasks\\/ServerTasks-\\d+$/.test("
                                       "location.pathname) && document.readyState === "
                                       "'complete' && location.pathname")
    assert re.fullmatch(r"/app/tasks/ServerTasks-\d+", path)
    initially_done = await run(browser.evaluate,
                               "window.portalTestMarker = 'same page'; "
                               "document.getElementById('task-log').dataset.completed")

    # the output arrives through the page's polling, and the state turns to Success
    await run(browser.wait_for, """(() => {
        const log = document.getElementById('task-log');
        const state = document.querySelector('#task-state [data-badge]').textContent;
        return log.dataset.completed === 'true' && state === 'Success'
            && log.textContent.includes('line-3');
    })()""", 30)
    text = await run(browser.evaluate, "document.getElementById('task-log').textContent")
    assert "portal says hello from" in text and "<b>not bold</b>" in text
    assert await run(browser.evaluate, "document.querySelectorAll('#task-log b').length") == 0
    if initially_done == "false":       # it ran while we watched: no reload happened
        assert await run(browser.evaluate, "window.portalTestMarker") == "same page"
    exit_code = await run(browser.evaluate, "document.querySelector('#activities "
                                            "[data-field=exit_code]').textContent")
    assert exit_code == "0"
    await run(browser.evaluate, "document.getElementById('task-log').scrollTop = 0")
    _assert_picture(await run(browser.screenshot, shots / "portal-task.png"))

    # sign out
    await run(browser.click, ".who button")
    await run(browser.wait_for, "location.pathname === '/app/login' && "
                                "document.body.textContent.includes('You have signed out.')")
