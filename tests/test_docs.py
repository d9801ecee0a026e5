"""The README is a front page and the details live in docs/: every relative
link (and image) of README.md and docs/*.md reaches an existing file, and
an existing heading where it names one (GitHub's anchors); the README stays
short; every docs page is reachable from the README.

Pure text checks: no package import, no network.
"""
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / 'README.md'
DOCS = REPO / 'docs'
README_MAX_LINES = 260

_FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})')
_HEADING = re.compile(r'^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$')
_CODE_SPAN = re.compile(r'(`+)(.+?)\1')
# [text](target) and ![alt](target), with an optional "title"; the text may
# hold inline code and (one level of) nested brackets.
_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]'
                   r'\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_HTML_SRC = re.compile(r'<(?:img|a)\b[^>]*?\b(?:src|href)="([^"]+)"', re.I)
_EXTERNAL = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*:')  # http:, https:, mailto:


def _prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif match and match.group(1)[0] == fence[0] \
                and len(match.group(1)) >= len(fence) \
                and not line.strip()[len(match.group(1)):].strip():
            fence = None


def github_slug(heading):
    """The anchor GitHub gives a heading: its rendered text (markup and
    link targets gone), lower-cased, every character that is not a
    letter, digit, underscore, hyphen or space dropped, spaces turned
    into hyphens (github-slugger's rule)."""
    text = re.sub(r'!\[([^\]]*)\]\([^)]*\)', r'\1', heading)    # images
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)        # links
    text = re.sub(r'<[^>]+>', '', text)                         # html tags
    parts = _CODE_SPAN.split(text)  # prose, fence, code, fence, code, ...
    text = ''.join(
        re.sub(r'\*+|(?<!\w)_+|_+(?!\w)', '', part) if i % 3 == 0  # emphasis
        else part.strip() if i % 3 == 2 else ''                     # code
        for i, part in enumerate(parts))
    text = text.strip().lower()
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char in '-_ ' or category[0] in 'LNM' or category == 'Pc':
            kept.append(char)
    return ''.join(kept).replace(' ', '-')


def anchors(path):
    """Every heading anchor of a markdown file, duplicates numbered -1, -2,
    ... as GitHub does."""
    seen = {}
    result = set()
    for _, line in _prose_lines(path.read_text(encoding='utf-8')):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        if slug in seen:
            seen[slug] += 1
            slug = f'{slug}-{seen[slug]}'
        else:
            seen[slug] = 0
        result.add(slug)
    return result


def links(path):
    """(line number, target) of every link and image outside code."""
    for number, line in _prose_lines(path.read_text(encoding='utf-8')):
        prose = _CODE_SPAN.sub('', line)
        for match in _LINK.finditer(prose):
            yield number, match.group(1)
        for match in _HTML_SRC.finditer(prose):
            yield number, match.group(1)


def _label(path):
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return path.name


def broken_links(path):
    """'file:line: target: why' for every relative link of ``path`` that
    does not resolve (file, or file + heading anchor)."""
    problems = []
    for number, target in links(path):
        if _EXTERNAL.match(target):
            continue
        where = f'{_label(path)}:{number}: {target}'
        file_part, _, anchor = target.partition('#')
        resolved = (path.parent / unquote(file_part)).resolve() \
            if file_part else path
        if not resolved.exists():
            problems.append(f'{where}: no such file {resolved}')
            continue
        if anchor and resolved.suffix == '.md':
            if unquote(anchor).lower() not in anchors(resolved):
                problems.append(f'{where}: no heading #{anchor} in '
                                f'{resolved.name}')
    return problems


def markdown_pages():
    return [README] + sorted(DOCS.glob('*.md'))


@pytest.mark.parametrize('page', markdown_pages(),
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_readme_is_a_front_page():
    lines = README.read_text(encoding='utf-8').count('\n')
    assert lines <= README_MAX_LINES, (
        f'README.md has {lines} lines (at most {README_MAX_LINES}): move '
        'the details into a page under docs/ and link it')


def linked_pages(path):
    """The files ``path`` links to, resolved."""
    targets = set()
    for _, target in links(path):
        if _EXTERNAL.match(target):
            continue
        file_part = target.partition('#')[0]
        if file_part:
            targets.add((path.parent / unquote(file_part)).resolve())
    return targets


def test_every_docs_page_is_linked_from_the_readme():
    linked = linked_pages(README)
    pages = sorted(DOCS.glob('*.md'))
    assert pages, 'docs/ has no pages'
    missing = [p.relative_to(REPO).as_posix() for p in pages
               if p.resolve() not in linked]
    assert missing == [], 'not linked from README.md'


# --- the checks themselves catch what they guard ---------------------------

def test_slugs_follow_githubs_rules():
    assert github_slug('Mask R-CNN ([paper](https://arxiv.org/abs/1703.06870))'
                       ) == 'mask-r-cnn-paper'
    assert github_slug('A faster forward: `test.py --fuse-conv-bn`'
                       ) == 'a-faster-forward-testpy---fuse-conv-bn'
    assert github_slug('Checkpoints and `torch.load`') \
        == 'checkpoints-and-torchload'
    assert github_slug('Your own PyTorch; a machine without internet') \
        == 'your-own-pytorch-a-machine-without-internet'
    assert github_slug('bfloat16 autocast: `BF16OptimWrapper`') \
        == 'bfloat16-autocast-bf16optimwrapper'
    assert github_slug('The `sample_data` module') == 'the-sample_data-module'
    assert github_slug('The `__init__.py` file, *not* _this_') \
        == 'the-__init__py-file-not-this'


def test_broken_links_are_found(tmp_path):
    (tmp_path / 'docs').mkdir()
    page = tmp_path / 'docs' / 'page.md'
    (tmp_path / 'docs' / 'other.md').write_text(
        '# Other\n\n## A section\n\n## A section\n')
    page.write_text(
        '# Page\n\n'
        '[ok](other.md) [ok](other.md#a-section) [ok](other.md#a-section-1)\n'
        '[ok](#page) ![ok](other.md) [web](https://example.com/x.md#nope)\n'
        '`[in code](missing.md)`\n'
        '```shell\n# Not a heading\n[in a block](missing.md)\n```\n'
        '[bad](missing.md) ![bad](gone.jpg) [bad](other.md#no-such)\n'
        '[bad](#not-a-heading)\n')
    problems = broken_links(page)
    assert [p.split(': ')[1] for p in problems] == [
        'missing.md', 'gone.jpg', 'other.md#no-such', '#not-a-heading']
