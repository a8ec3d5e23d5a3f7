"""Headless Chromium (the Debian `chromium` and `chromium-driver` packages) through Selenium:
load a page from a file, read its console errors and broken images, take a screenshot."""
import dataclasses
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

WIDTH, HEIGHT = 1280, 900


@dataclasses.dataclass
class PageCheck:
  console_errors: list  # the browser console's SEVERE entries
  broken_images: list  # the src of each <img> that did not load
  screenshot: np.ndarray  # (height, width, 3) uint8, the whole page


def find_driver():
  """(chromium, chromedriver) paths; a skip where none is installed, a failure in CI, which must
  run the browser tests (.ci/run installs them)."""
  chromium = shutil.which('chromium') or shutil.which('chromium-browser')
  driver = shutil.which('chromedriver')
  if not (chromium and driver):
    message = ('headless Chromium is not installed (Debian: apt-get install chromium '
               'chromium-driver)')
    if os.environ.get('CI', '').lower() == 'true':
      pytest.fail(f'{message}; CI must run the browser tests')
    pytest.skip(message)
  return chromium, driver


class Browser:
  def __init__(self):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = find_driver()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ('--headless=new', '--no-sandbox', '--disable-gpu',
                     '--disable-dev-shm-usage', f'--window-size={WIDTH},{HEIGHT}'):
      options.add_argument(argument)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    self.driver = webdriver.Chrome(service=Service(driver), options=options)

  def check(self, page: Path) -> PageCheck:
    """Loads `page` (a file) and waits for its images; what a reader would see go wrong."""
    from PIL import Image
    self.driver.get_log('browser')  # the previous page's
    self.driver.get(Path(page).resolve().as_uri())
    self.driver.execute_async_script(
        'var done = arguments[0];'
        'Promise.all(Array.from(document.images).map(function (i) {'
        '  return i.complete ? null : new Promise(function (r) { i.onload = i.onerror = r; });'
        '})).then(function () { done(); });')
    broken = self.driver.execute_script(
        'return Array.from(document.images).filter(function (i) {'
        '  return !i.complete || i.naturalWidth === 0; }).map(function (i) { return i.src; });')
    errors = [entry for entry in self.driver.get_log('browser') if entry['level'] == 'SEVERE']
    height = self.driver.execute_script('return document.documentElement.scrollHeight')
    self.driver.set_window_size(WIDTH, min(max(height, 200), 16000))
    shot = Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert('RGB')
    self.driver.set_window_size(WIDTH, HEIGHT)
    return PageCheck(errors, broken, np.asarray(shot))

  def column_after_clicks(self, page: Path, table_id: str, header: str, clicks: int) -> list:
    """The data-values of a table's column after `clicks` clicks on its header."""
    from selenium.webdriver.common.by import By
    self.driver.get(Path(page).resolve().as_uri())
    table = self.driver.find_element(By.ID, table_id)
    headers = [h.text.strip() for h in table.find_elements(By.TAG_NAME, 'th')]
    column = headers.index(header)
    for _ in range(clicks):
      table.find_elements(By.TAG_NAME, 'th')[column].click()
    return [row.find_elements(By.TAG_NAME, 'td')[column].get_attribute('data-value')
            for row in table.find_elements(By.CSS_SELECTOR, 'tbody tr')]

  def close(self):
    self.driver.quit()


def assert_renders(check: PageCheck):
  """No console error, no broken image, and a screenshot that is not blank."""
  assert not check.console_errors, check.console_errors
  assert not check.broken_images, check.broken_images
  assert check.screenshot.std() > 20, 'the screenshot is (nearly) one colour'
