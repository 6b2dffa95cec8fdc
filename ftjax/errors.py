"""One exception type for mistakes a user can fix; the entry point prints it as one line."""


class UserError(Exception):
  """Bad config, missing data, unusable workdir: reported as `ftjax: error: ...`, exit 2."""
