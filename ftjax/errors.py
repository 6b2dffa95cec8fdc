"""One exception type for mistakes a user can fix; the entry point prints it as one line."""


class UserError(Exception):
  """Bad config, missing data, unusable workdir: reported as `ftjax: error: ...`, exit 2."""


def brief(e: BaseException, most: int = 200) -> str:
  """A library's exception as one short line for a UserError message: its first line (its first
  sentence if long), ANSI colours and TensorStore's spec dump dropped."""
  import re
  text = re.sub(r'\x1b\[[0-9;]*m', '', str(e)).strip().split(' See full TensorStore details')[0]
  text = ' '.join(text.splitlines()[0].split()) if text else ''
  text = text or type(e).__name__
  if len(text) > most and '. ' in text[:most]:
    text = text[:text.index('. ', 0, most) + 1]
  return text if len(text) <= most else text[:most - 3] + '...'


def read_text(path: str, expected: str) -> str:
  """File `path` as UTF-8 text; unreadable, empty or in another encoding is one UserError line that
  names the file and what was `expected`."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f'{path}: cannot read it ({e.strerror or brief(e)}); expected {expected}') from None
  if not raw.strip():
    raise UserError(f'{path}: the file is empty; expected {expected}')
  try:
    return raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise UserError(f'{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); expected {expected}, '
                    'in UTF-8') from None


def require(module: str, what: str, extra: str):
  """An optional dependency the core install leaves out (torch), or one UserError line saying how to get it."""
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError:
    raise UserError(f"{what} needs {module}, which ftjax's core install leaves out: pip install 'ftjax[{extra}]' "
                    f"(from a checkout: pip install -e '.[{extra}]')") from None
