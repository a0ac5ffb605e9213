"""A few words of English, for captions and for messages: "a red circle", "an int"."""


def with_article(words: str) -> str:
    """`words` after "a" or "an": "an orange square", "a list"."""
    return ("an " if words[0] in "aeiou" else "a ") + words
