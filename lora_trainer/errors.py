"""Errors a user can cause: what the tab and the API show."""


class UserError(Exception):
    """A problem the user can fix: names the file or config key, and the fix."""

    def __init__(self, message, path=None, fix=None, key=None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.fix = fix
        self.key = key
        super().__init__(self.text())

    def text(self):
        parts = []
        if self.key:
            parts.append(f"{self.key}: ")
        if self.path:
            parts.append(f"{self.path}: ")
        parts.append(self.message)
        if self.fix:
            parts.append(f" Fix: {self.fix}")
        return "".join(parts)

    def as_dict(self):
        return {"message": self.message, "path": self.path, "fix": self.fix, "key": self.key,
                "text": self.text()}


class ConfigError(UserError):
    """A bad config value; `key` is the kohya-style config key."""

    def __init__(self, key, message, fix=None):
        super().__init__(message, fix=fix, key=key)


class TrainingStopped(Exception):
    """Raised inside the loop when the user pressed Stop/Interrupt (not an error)."""
