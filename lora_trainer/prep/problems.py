"""One finding about one file, as the prep reports list it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UserError, problem_text


@dataclass(frozen=True)
class FileProblem:
    """Something to tell the user about one file (or one folder).

    severity "error": the file was skipped / could not be used;
    "warning": it was used, but check it (e.g. a caption decoded as cp1252);
    "note": informational (a hidden file ignored, a link loop not followed).
    `path` is what the user recognises: the source path, or `archive.zip/member`.
    """

    path: str | None
    message: str
    fix: str | None = None
    kind: str = "error"
    severity: str = "error"

    @classmethod
    def from_user_error(cls, exc: UserError, *, kind: str, path=None, fix=None,
                        severity: str = "error") -> "FileProblem":
        return cls(str(path) if path is not None else exc.path, exc.message,
                   fix if fix is not None else exc.fix, kind, severity)

    def text(self) -> str:
        return problem_text(self.message, self.path, self.fix)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["text"] = self.text()
        return out
