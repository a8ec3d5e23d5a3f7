"""Reading the report pages back: their tables (by id), cells (text, data-value, link), the
elements and text a browser would show."""
import dataclasses
import html.parser
from pathlib import Path
from urllib.parse import unquote


@dataclasses.dataclass
class Cell:
  text: str
  value: str  # data-value: what sorting compares (repr of a number)
  href: str = ''  # where its link leads (URL-unquoted)


class Page(html.parser.HTMLParser):
  """`tables` {id: [{data-key: Cell}]} (rows of the tbody, or every row of a table without one),
  `row_classes` {id: [each of those rows' class attribute]}, `row_headers` {id: {header text:
  Cell}} for two-column tables of <th>label</th><td>value</td>,
  `tags` (each element's name), `text` (all text, unescaped), `links` and `images` (the paths
  that links and images lead to: URL-unquoted)."""

  def __init__(self, path: Path):
    super().__init__(convert_charrefs=True)
    self.tables, self.row_headers, self.row_classes = {}, {}, {}
    self.tags, self.links, self.images = [], [], []
    self.text = []
    self._table = self._row = self._cell = self._header = None
    self.feed(Path(path).read_text(encoding='utf-8'))

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.tags.append(tag)
    if tag == 'table':
      self._table = attrs.get('id') or f'table-{len(self.tables)}'
      self.tables[self._table], self.row_headers[self._table] = [], {}
      self.row_classes[self._table] = []
    elif tag == 'tr' and self._table:
      self._row, self._header = {}, None
      self._row_class = attrs.get('class', '')
    elif tag == 'td' and self._row is not None:
      self._cell = (attrs.get('data-key'), Cell('', attrs.get('data-value', '')))
    elif tag == 'th' and self._row is not None:
      self._header = ''
      self._cell = None
    elif tag == 'a':
      self.links.append(unquote(attrs.get('href', '')))
      if self._cell:
        self._cell[1].href = unquote(attrs.get('href', ''))
    elif tag == 'img':
      self.images.append(unquote(attrs.get('src', '')))

  def handle_endtag(self, tag):
    if tag == 'td' and self._cell:
      key, cell = self._cell
      cell.text = cell.text.strip()
      if key:
        self._row[key] = cell
      elif self._header is not None:
        self.row_headers[self._table][self._header.strip()] = cell
      self._cell = None
    elif tag == 'tr' and self._row is not None:
      if self._row:
        self.tables[self._table].append(self._row)
        self.row_classes[self._table].append(self._row_class)
      self._row = None
    elif tag == 'table':
      self._table = None

  def handle_data(self, data):
    self.text.append(data)
    if self._cell:
      self._cell[1].text += data
    elif self._header is not None and self._row is not None:
      self._header += data

  @property
  def all_text(self) -> str:
    return ''.join(self.text)
