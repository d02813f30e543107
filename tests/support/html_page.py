"""The studio page's markup, read with the standard library's HTML parser."""

from dataclasses import dataclass
from html.parser import HTMLParser


@dataclass(frozen=True)
class Tag:
    """One start tag: its name, attributes, and the text directly inside it when it is a <script> or <style>."""

    name: str
    attrs: dict[str, str | None]
    text: str = ""


class PageMarkup(HTMLParser):
    """Every start tag of a page, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[Tag] = []
        self._open_text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record the tag."""
        self.tags.append(Tag(tag, dict(attrs)))
        self._open_text = [] if tag in ("script", "style") else None

    def handle_data(self, data: str) -> None:
        """Keep the text inside a <script> or <style>."""
        if self._open_text is not None:
            self._open_text.append(data)

    def handle_endtag(self, tag: str) -> None:
        """Close a <script> or <style>, with its text."""
        if self._open_text is not None and tag in ("script", "style"):
            last = self.tags[-1]
            self.tags[-1] = Tag(last.name, last.attrs, "".join(self._open_text))
        self._open_text = None

    def by_id(self, element_id: str) -> Tag:
        """The tag with this id."""
        [found] = [tag for tag in self.tags if tag.attrs.get("id") == element_id]
        return found

    def options_of(self, select_id: str) -> list[Tag]:
        """The <option>s of a <select>, in order."""
        start = self.tags.index(self.by_id(select_id))
        options = []
        for tag in self.tags[start + 1 :]:
            if tag.name != "option":
                break
            options.append(tag)
        return options


def parse_page(html: str) -> PageMarkup:
    """`html`'s start tags."""
    markup = PageMarkup()
    markup.feed(html)
    markup.close()
    return markup
