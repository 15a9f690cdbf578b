"""Errors a user can cause: what the tab and the API show."""


def problem_text(message, path=None, fix=None, key=None) -> str:
    """'key: path: message Fix: fix' -- the one way problems read, in errors and in reports."""
    parts = [f"{key}: " if key else "", f"{path}: " if path else "", message, f" Fix: {fix}" if fix else ""]
    return "".join(parts)


class UserError(Exception):
    """A problem the user can fix: names the file or config key, and the fix."""

    def __init__(self, message, path=None, fix=None, key=None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.fix = fix
        self.key = key
        super().__init__(self.text())

    def text(self):
        return problem_text(self.message, self.path, self.fix, self.key)

    def as_dict(self):
        return {"message": self.message, "path": self.path, "fix": self.fix, "key": self.key,
                "text": self.text()}


class ConfigError(UserError):
    """A bad config value; `key` is the kohya-style config key."""

    def __init__(self, key, message, fix=None):
        super().__init__(message, fix=fix, key=key)


class TrainingStopped(Exception):
    """Raised inside the loop when the user pressed Stop/Interrupt (not an error)."""
