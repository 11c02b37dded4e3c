"""A real browser for the Django tests: a page of headless Chromium (Debian's ``chromium``
and ``chromium-driver``, found by :func:`browser.chromium`, which skips without them,
except in CI) driven by Selenium."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from browser import headless_chromium

WAIT = 30.0  # seconds any one browser-side condition may take


class Page:
    """One browser (its own profile, so its own user) on the chat."""

    def __init__(self, browser: str, driver: str, *arguments: str) -> None:
        self.driver = headless_chromium(browser, driver, "--window-size=820,640", *arguments)

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
                lambda _: condition()
            )
        except TimeoutException:
            raise AssertionError(
                f"{what}: not within {timeout}s; messages {self.texts()}, status {self.status()!r}"
            ) from None

    def enter(self, base: str, user: str, room: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.get(base + "/")
        self.driver.find_element(By.NAME, "user").send_keys(user)
        field = self.driver.find_element(By.NAME, "room")
        field.clear()
        field.send_keys(room)
        field.submit()
        self.wait(lambda: self.status() == "live", f"{user}'s page goes live")

    def say(self, text: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        field = self.driver.find_element(By.NAME, "text")
        field.send_keys(text + Keys.ENTER)
        # Sent: the page empties the field once it has taken the text.
        self.wait(lambda: field.get_attribute("value") == "", f"sending {text!r}")

    def say_unsent(self, text: str) -> None:
        """Type ``text`` and Enter, expecting no success (see :meth:`error`)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.driver.find_element(By.NAME, "text").send_keys(text + Keys.ENTER)

    def texts(self) -> list[str]:
        try:
            found = self.driver.execute_script(
                "return Array.from(document.querySelectorAll('#messages li .text'),"
                " (e) => e.textContent)"
            )
        except Exception as exc:  # the page is navigating: say so in failure messages
            return [f"<{type(exc).__name__}>"]
        return list(found)

    def status(self) -> str:
        try:
            return str(
                self.driver.execute_script("return document.getElementById('status').textContent")
            )
        except Exception:
            return "<no page>"

    def error(self) -> str | None:
        """The chat page's error line if shown, else None."""
        try:
            shown = self.driver.execute_script(
                "const e = document.getElementById('error');"
                " return e && !e.hidden ? e.textContent : null"
            )
        except Exception:
            return "<no page>"
        return None if shown is None else str(shown)

    def field(self, name: str) -> str:
        """The value of the page's input ``name``."""
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.NAME, name).get_attribute("value"))

    def console(self) -> list[str]:
        """What the page logged to the console since the last call."""
        return [entry["message"] for entry in self.driver.get_log("browser")]

    def quit(self) -> None:
        self.driver.quit()
