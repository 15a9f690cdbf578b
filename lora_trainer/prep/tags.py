"""Tag editing over a whole dataset: pure functions over ``{image: [tags]}``.

A caption is held as a list of tags. The keep-tokens separator (``|||`` by default) is an
element of that list, so its position survives every edit: the tags before the first
separator are the fixed part (trigger words kohya never shuffles or drops), the tags after a
second separator are a fixed suffix, the ones in between (or all of them, without a separator)
are the flexible part. ``parse_caption`` / ``format_caption`` convert to and from text.

Conventions shared by every function here:
- tags are compared case-insensitively, with surrounding and repeated whitespace ignored
  (CLIP's tokenizer lower-cases its input, and kohya's ss_tag_frequency lower-cases too);
  the spelling of the first occurrence is what is kept;
- nothing is mutated: every edit returns a new dict, in the input's key order;
- ``keys`` (optional) restricts an edit to those images, e.g. the ones a filter shows
  (the dataset-tag-editor rule "batch edits apply only to the displayed images"); the other
  images are copied through unchanged;
- an argument naming tags accepts a list of tags or one comma-separated string.

No I/O here: the file helpers ``write_text_atomic`` and ``backup_path`` live in prep.files and
are re-exported for the callers that import them from this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..dataset.captions import tag_frequency
from .files import backup_path, write_text_atomic  # noqa: F401 - re-exported

KEEP_SEPARATOR = "|||"
SORT_BY = ("alphabetical", "frequency")
FILTER_MODES = ("all", "any", "none")


# ---------------------------------------------------------------- parsing and formatting

def normalise_tag(tag: str) -> str:
    """The comparison key of a tag: stripped, inner whitespace collapsed, lower-cased."""
    return " ".join(str(tag).split()).lower()


def _clean(tag: str) -> str:
    return " ".join(str(tag).split())


def parse_caption(text: str | None, keep_separator: str = KEEP_SEPARATOR,
                  caption_separator: str = ",") -> list[str]:
    """'sks, 1girl ||| smile, dress' -> ['sks', '1girl', '|||', 'smile', 'dress'].

    Only the first non-empty line is read (what the trainer uses). Empty tags (', ,', a
    trailing comma) are dropped; every occurrence of `keep_separator` becomes one element.
    """
    lines = [line for line in (text or "").splitlines() if line.strip()]
    text = lines[0] if lines else ""
    caption_separator = caption_separator or ","
    parts = text.split(keep_separator) if keep_separator else [text]
    tags: list[str] = []
    for i, part in enumerate(parts):
        if i:
            tags.append(keep_separator)
        tags.extend(t for t in (_clean(x) for x in part.split(caption_separator)) if t)
    return tags


def format_caption(tags: Iterable[str], keep_separator: str = KEEP_SEPARATOR) -> str:
    """Tags joined with ', '; a separator element becomes ' ||| ' (no commas around it).

    kohya splits on the separator first and strips every token, so 'a, b ||| c' keeps
    'a' and 'b' fixed. ``parse_caption(format_caption(tags)) == tags`` for parsed tags.
    """
    segments = _segments(list(tags), keep_separator)
    text = f" {keep_separator} ".join(", ".join(seg) for seg in segments) if keep_separator \
        else ", ".join(segments[0])
    return text.strip()


def as_tags(tags) -> list[str]:
    """A list of tags from a comma-separated string or an iterable of tags (empties dropped)."""
    if tags is None:
        return []
    if isinstance(tags, str):
        return [t for t in (_clean(x) for x in tags.split(",")) if t]
    out = []
    for tag in tags:
        out.extend(as_tags(tag) if isinstance(tag, str) and "," in tag else
                   [_clean(tag)] if _clean(tag) else [])
    return out


def _segments(tags: list[str], sep: str) -> list[list[str]]:
    """Split at every separator element: [fixed, flexible, suffix...] when there is one."""
    segments: list[list[str]] = [[]]
    for tag in tags:
        if sep and tag == sep:
            segments.append([])
        else:
            segments[-1].append(tag)
    return segments


def _join(segments: list[list[str]], sep: str) -> list[str]:
    out: list[str] = []
    for i, seg in enumerate(segments):
        if i:
            out.append(sep)
        out.extend(seg)
    return out


def _flex_index(segments) -> int:
    """Index of the flexible segment: 1 with a separator, else 0."""
    return 1 if len(segments) > 1 else 0


def _selected(captions: Mapping, keys) -> set | None:
    return None if keys is None else set(keys)


def _apply(captions: Mapping, keys, edit) -> dict:
    chosen = _selected(captions, keys)
    return {k: (edit(list(v)) if chosen is None or k in chosen else list(v))
            for k, v in captions.items()}


def _dedupe(tags: list[str], sep: str) -> list[str]:
    seen: set[str] = set()
    out = []
    for tag in tags:
        if tag == sep:
            out.append(tag)
            continue
        key = normalise_tag(tag)
        if key in seen:
            continue
        seen.add(key)
        out.append(tag)
    return out


# ---------------------------------------------------------------- queries

def frequency_table(captions: Mapping, keys=None, keep_separator: str = KEEP_SEPARATOR) -> dict[str, int]:
    """{tag: number of images that have it}, most frequent first, ties alphabetical.

    Counted once per image (duplicates within a caption do not count twice), lower-cased as
    kohya records ss_tag_frequency (dataset.captions.tag_frequency). The separator is not a tag.
    """
    chosen = _selected(captions, keys)
    texts = []
    for k, tags in captions.items():
        if chosen is not None and k not in chosen:
            continue
        unique = {normalise_tag(t) for t in tags if t != keep_separator}
        texts.append(",".join(sorted(unique)))
    counts = tag_frequency(texts, keep_tokens_separator=keep_separator)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def filter_images(captions: Mapping, tags, mode: str = "all") -> list:
    """Keys of the images whose caption has all / any / none of `tags`, in dict order.

    An empty `tags` is no filter: every image is returned, whatever the mode.
    """
    if mode not in FILTER_MODES:
        raise ValueError(f"mode must be one of {FILTER_MODES}, not {mode!r}")
    wanted = {normalise_tag(t) for t in as_tags(tags)}
    if not wanted:
        return list(captions)
    out = []
    for key, caption in captions.items():
        have = {normalise_tag(t) for t in caption}
        if mode == "all":
            ok = wanted <= have
        elif mode == "any":
            ok = bool(wanted & have)
        else:
            ok = not (wanted & have)
        if ok:
            out.append(key)
    return out


def find_redundant(captions: Mapping, keys=None, keep_separator: str = KEEP_SEPARATOR
                   ) -> dict[tuple[str, str], int]:
    """{(generic, specific): images} for the pairs `consolidate_tags` would merge.

    ('shirt', 'white shirt'): 'shirt' is dropped where 'white shirt' is present. Sorted by
    image count, most first. Use it to preview a consolidation.
    """
    chosen = _selected(captions, keys)
    counts: dict[tuple[str, str], int] = {}
    for k, tags in captions.items():
        if chosen is not None and k not in chosen:
            continue
        segments = _segments(list(tags), keep_separator)
        flexible = [t for i, seg in enumerate(segments) if i > 0 or len(segments) == 1 for t in seg]
        everything = [t for seg in segments for t in seg]
        pairs = set()
        for tag in flexible:
            specific = _more_specific(tag, everything)
            if specific is not None:
                pairs.add((normalise_tag(tag), normalise_tag(specific)))
        for pair in pairs:
            counts[pair] = counts.get(pair, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- edits

def add_tags(captions: Mapping, tags=(), triggers=(), *, position: str = "end", keys=None,
             add_separator: bool = False, keep_separator: str = KEEP_SEPARATOR) -> dict:
    """Insert `triggers` first (in the given order) and add `tags`, never duplicating a tag.

    Triggers already present elsewhere in a caption are moved to the front. With a separator
    in the caption the triggers open its fixed part; without one, ``add_separator=True``
    puts a separator right after them (so kohya keeps them fixed when shuffling).
    `tags` already present stay where they are; new ones go to the end of the flexible part
    (``position="end"``) or to its start (``"start"``: after the separator, or after the
    leading triggers when there is none).
    """
    if position not in ("start", "end"):
        raise ValueError("position must be 'start' or 'end'")
    triggers = _dedupe(as_tags(triggers), keep_separator)
    new_tags = _dedupe(as_tags(tags), keep_separator)
    trigger_keys = {normalise_tag(t) for t in triggers}
    sep = keep_separator

    def edit(caption: list[str]) -> list[str]:
        if trigger_keys:
            caption = [t for t in caption if t == sep or normalise_tag(t) not in trigger_keys]
        segments = _segments(caption, sep)
        has_sep = len(segments) > 1
        if triggers:
            if has_sep:
                segments[0] = triggers + segments[0]
            elif add_separator and sep:
                segments = [list(triggers), segments[0]]
                has_sep = True
            else:
                segments[0] = triggers + segments[0]
        present = {normalise_tag(t) for seg in segments for t in seg}
        missing = [t for t in new_tags if normalise_tag(t) not in present]
        if missing:
            flex = segments[_flex_index(segments)]
            if position == "end":
                flex.extend(missing)
            else:
                at = 0 if has_sep else len(triggers)
                flex[at:at] = missing
        return _join(segments, sep)

    return _apply(captions, keys, edit)


def remove_tags(captions: Mapping, tags, *, keys=None) -> dict:
    """Drop every occurrence of `tags` (include the separator itself to remove it)."""
    unwanted = {normalise_tag(t) for t in as_tags(tags)}
    return _apply(captions, keys, lambda c: [t for t in c if normalise_tag(t) not in unwanted])


def parse_synonyms(text: str) -> dict[str, str]:
    """Synonym list, one rule a line: 'circlet, diadem -> tiara' (also '→').

    Every tag on the left is replaced by the right side (which may be several tags, or
    empty to remove). Blank lines and lines starting with '#' are ignored. Returns
    {old: new}; later lines win for the same old tag.
    """
    rules: dict[str, str] = {}
    for number, line in enumerate((text or "").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for arrow in ("->", "→"):
            if arrow in line:
                left, right = line.split(arrow, 1)
                break
        else:
            raise ValueError(f"synonym line {number} has no '->': {line!r}")
        for old in as_tags(left):
            rules[old] = ", ".join(as_tags(right))
    return rules


def _mapping(mapping) -> dict[str, list[str]]:
    if isinstance(mapping, str):
        mapping = parse_synonyms(mapping)
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    return {normalise_tag(old): as_tags(new) for old, new in items}


def replace_tags(captions: Mapping, mapping, *, keys=None,
                 keep_separator: str = KEEP_SEPARATOR) -> dict:
    """Replace tags by a synonym mapping ({old: new}, pairs, or `parse_synonyms` text).

    One pass (a -> b, b -> c does not turn a into c). The new tags take the old one's place;
    if one of them is already in the caption the first occurrence is kept (no duplicates).
    An empty replacement removes the tag.
    """
    rules = _mapping(mapping)

    def edit(caption: list[str]) -> list[str]:
        out: list[str] = []
        for tag in caption:
            key = normalise_tag(tag)
            if tag != keep_separator and key in rules:
                out.extend(rules[key])
            else:
                out.append(tag)
        return _dedupe(out, keep_separator)

    return _apply(captions, keys, edit)


def dedupe_tags(captions: Mapping, *, keys=None, keep_separator: str = KEEP_SEPARATOR) -> dict:
    """Each tag once per caption; the first occurrence (and its spelling) is kept."""
    return _apply(captions, keys, lambda c: _dedupe(c, keep_separator))


def sort_tags(captions: Mapping, by: str = "alphabetical", *, triggers=(), reverse: bool = False,
              keys=None, keep_separator: str = KEEP_SEPARATOR) -> dict:
    """Sort the flexible part of each caption; the fixed part and fixed suffix stay as they are.

    by="alphabetical": A→Z (case-insensitive); by="frequency": most images first, by the
    frequency over the whole dataset (all keys), ties alphabetical. ``reverse`` flips the
    order of the sorted tags. `triggers` found in the flexible part are put first in the order
    given (for captions that carry their trigger without a separator).
    """
    if by not in SORT_BY:
        raise ValueError(f"by must be one of {SORT_BY}, not {by!r}")
    freq = frequency_table(captions, keep_separator=keep_separator) if by == "frequency" else {}
    order = [normalise_tag(t) for t in as_tags(triggers)]
    rank = {t: i for i, t in enumerate(order)}

    def sort_key(tag):
        key = normalise_tag(tag)
        if by == "frequency":
            return (-freq.get(key, 0), key, tag)
        return (key, tag)

    def edit(caption: list[str]) -> list[str]:
        segments = _segments(caption, keep_separator)
        i = _flex_index(segments)
        flex = segments[i]
        first = sorted((t for t in flex if normalise_tag(t) in rank), key=lambda t: rank[normalise_tag(t)])
        rest = sorted((t for t in flex if normalise_tag(t) not in rank), key=sort_key, reverse=reverse)
        segments[i] = first + rest
        return _join(segments, keep_separator)

    return _apply(captions, keys, edit)


def _more_specific(tag: str, caption: list[str]) -> str | None:
    """Another tag of the caption that ends with ' ' + tag (or '_' + tag), if any."""
    key = normalise_tag(tag)
    if not key:
        return None
    for other in caption:
        other_key = normalise_tag(other)
        if other_key != key and (other_key.endswith(" " + key) or other_key.endswith("_" + key)):
            return other
    return None


def consolidate_tags(captions: Mapping, synonyms=None, *, keep=(), keys=None,
                     keep_separator: str = KEEP_SEPARATOR) -> dict:
    """Merge redundant tags the way dataset guides recommend.

    1. `synonyms` (a mapping or `parse_synonyms` text) are applied, e.g. circlet -> tiara;
    2. a generic tag is dropped when a more specific one ends with ' ' + it in the same
       caption ('shirt' + 'white shirt' -> 'white shirt'; the '_' spelling counts too);
    3. duplicates are removed.
    Tags in the fixed part (before the separator) and tags listed in `keep` are never dropped
    by step 2 (they may still make a flexible tag redundant).
    """
    result = replace_tags(captions, synonyms, keys=keys, keep_separator=keep_separator) \
        if synonyms else {k: list(v) for k, v in captions.items()}
    protected = {normalise_tag(t) for t in as_tags(keep)}

    def edit(caption: list[str]) -> list[str]:
        segments = _segments(caption, keep_separator)
        everything = [t for seg in segments for t in seg]
        for i, seg in enumerate(segments):
            if i == 0 and len(segments) > 1:
                continue  # the fixed (trigger) part
            segments[i] = [t for t in seg
                           if normalise_tag(t) in protected or _more_specific(t, everything) is None]
        return _dedupe(_join(segments, keep_separator), keep_separator)

    return _apply(result, keys, edit)

