"""One-line messages: what the user reads of an exception or a long text, on one line of bounded width."""


def clip(text: str, width: int = 160) -> str:
    """At most `width` characters, cut at a word's end (never mid-word) with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > width // 2 else cut).rstrip(" ,;:(") + "…"


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return clip(text.splitlines()[0] if text else type(exc).__name__)
