"""Example upstream: a small in-memory notebook. Launched by the default servers.toml over stdio."""

from __future__ import annotations

from pydantic import BaseModel

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("notes", instructions="Keep short notes for the duration of the session.")
_notes: dict[str, str] = {}


class Note(BaseModel):
    title: str
    body: str


@server.tool()
def add_note(title: str, body: str) -> Note:
    """Save a note under a title (replacing any note with the same title)."""
    _notes[title] = body
    return Note(title=title, body=body)


@server.tool()
def list_notes() -> list[str]:
    """The titles of all saved notes."""
    return sorted(_notes)


@server.tool()
def read_note(title: str) -> Note:
    """One note by its title."""
    if title not in _notes:
        raise ToolError(f"no note titled {title!r}")
    return Note(title=title, body=_notes[title])


@server.tool()
def search_notes(text: str) -> list[Note]:
    """Notes whose title or body contains `text` (case-insensitive)."""
    needle = text.lower()
    return [Note(title=t, body=b) for t, b in sorted(_notes.items()) if needle in t.lower() or needle in b.lower()]


if __name__ == "__main__":
    server.run("stdio")
