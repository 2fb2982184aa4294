"""MkDocs hook (mkdocs.yml `hooks:`): the configuration page's key table, generated from the typed
config at build time so it cannot drift from the code."""

from orchestration.settings.config_reference import reference_table

MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "configuration.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/configuration.md lost its {MARKER} line: the key table has nowhere to go")
    return markdown.replace(MARKER, reference_table())
