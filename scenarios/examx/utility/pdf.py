"""A minimal PDF writer and reader for ExamX's printouts (question papers, order copies).

Written in-house when the reporting library turned out to need a C toolchain on the
workers: text only, the two standard Helvetica fonts, Flate-compressed page streams.
"""

import re
import zlib

PAGE_W, PAGE_H = 595, 842  # A4 in points
MARGIN = 48

# Approximate Helvetica advance widths (1/1000 em) by character class.
_NARROW = set("ijl.,;:!|'`[]()ft ")
_WIDE = set("mwMW@%")
_CAPS = set("ABCDEFGHIJKLMNOPQRSTUVXYZ&")
WIDTHS = {chr(c): 556 for c in range(32, 127)}
WIDTHS.update({c: 278 for c in _NARROW})
WIDTHS.update({c: 667 for c in _CAPS})
WIDTHS.update({c: 889 for c in _WIDE})
WIDTHS["r"] = 333
WIDTHS["-"] = 333


def text_width(text, size, bold=False):
    total = 0
    for ch in text:
        total += WIDTHS.get(ch, 600)
    return total * size / 1000 * (1.05 if bold else 1.0)


def wrap(text, size, max_width, bold=False):
    """Greedy word wrap by measured width."""
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if text_width(candidate, size, bold) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        rest = word
        while text_width(rest, size, bold) > max_width:  # a word longer than a line
            cut = len(rest)
            while cut > 1 and text_width(rest[:cut], size, bold) > max_width:
                cut -= 1
            lines.append(rest[:cut])
            rest = rest[cut:]
        current = rest
    if current:
        lines.append(current)
    return lines or [""]


def escape(text):
    out = []
    for ch in text:
        if ch in "()\\":
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def unescape(text):
    return re.sub(r"\\([()\\])", r"\1", text)


class Document:
    """Pages of positioned text lines; ``render`` gives the PDF bytes."""

    def __init__(self, title, *, size=10, leading=1.35):
        self.title = title
        self.size = size
        self.leading = leading
        self.pages = []
        self.marks = []  # the watermark of each page
        self.footer = None
        self.watermark = None  # for the pages started from now on
        self._new_page()

    def _new_page(self):
        self.pages.append([])
        self.marks.append(self.watermark)
        self.y = PAGE_H - MARGIN

    def _room(self, height):
        if self.y - height < MARGIN + 20:
            self._new_page()

    def text(self, text, *, size=None, bold=False, indent=0, align="left"):
        size = size or self.size
        width = PAGE_W - 2 * MARGIN - indent
        for line in wrap(text, size, width, bold):
            self._room(size * self.leading)
            self.y -= size * self.leading
            x = MARGIN + indent
            if align == "center":
                x = (PAGE_W - text_width(line, size, bold)) / 2
            elif align == "right":
                x = PAGE_W - MARGIN - text_width(line, size, bold)
            font = "F2" if bold else "F1"
            self.pages[-1].append(
                f"BT /{font} {size} Tf {x:.2f} {self.y:.2f} Td ({escape(line)}) Tj ET")

    def row(self, cells, widths, *, size=None, bold=False):
        """One table row: each cell clipped to its column width."""
        size = size or self.size
        self._room(size * self.leading)
        self.y -= size * self.leading
        x = MARGIN
        font = "F2" if bold else "F1"
        for cell, col in zip(cells, widths):
            text = str(cell)
            while text and text_width(text, size, bold) > col - 4:
                text = text[:-1]
            self.pages[-1].append(
                f"BT /{font} {size} Tf {x:.2f} {self.y:.2f} Td ({escape(text)}) Tj ET")
            x += col

    def rule(self):
        self._room(6)
        self.y -= 4
        self.pages[-1].append(f"0.5 w {MARGIN} {self.y:.2f} m {PAGE_W - MARGIN} {self.y:.2f} l S")
        self.y -= 2

    def space(self, points):
        self._room(points)
        self.y -= points

    def page_break(self):
        if self.pages[-1]:
            self._new_page()
        else:  # nothing drawn yet: keep the page, with the current watermark
            self.marks[-1] = self.watermark

    def render(self, watermark=None):
        objects = []  # bodies, object number = index + 1

        def add(body):
            objects.append(body)
            return len(objects)

        catalog = add(None)
        pages_obj = add(None)
        font1 = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
        font2 = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold >>")
        info = add(f"<< /Title ({escape(self.title)}) /Producer (ExamX pdf 1.3) >>".encode())
        kids = []
        total = len(self.pages)
        for number, (drawn, mark) in enumerate(zip(self.pages, self.marks), start=1):
            ops = list(drawn)
            if mark or watermark:
                ops.insert(0, f"q 0.85 g BT /F2 54 Tf 0.7 0.7 -0.7 0.7 140 260 Tm "
                              f"({escape(mark or watermark)}) Tj ET Q")
            footer = f"{self.footer or self.title} - page {number} of {total}"
            ops.append(f"BT /F1 8 Tf {MARGIN} 28 Td ({escape(footer)}) Tj ET")
            stream = zlib.compress("\n".join(ops).encode("latin-1"), 6)
            content = add(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream)
                          + stream + b"\nendstream")
            kids.append(add(
                f"<< /Type /Page /Parent {pages_obj} 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
                f"/Resources << /Font << /F1 {font1} 0 R /F2 {font2} 0 R >> >> "
                f"/Contents {content} 0 R >>".encode()))
        objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages_obj} 0 R >>".encode()
        objects[pages_obj - 1] = (f"<< /Type /Pages /Count {len(kids)} /Kids ["
                                  + " ".join(f"{k} 0 R" for k in kids) + "] >>").encode()
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for number, body in enumerate(objects, start=1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
        for offset in offsets:
            out += b"%010d 00000 n \n" % offset
        out += (b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
                % (len(objects) + 1, catalog, info, xref))
        return bytes(out)


_STREAM = re.compile(rb"<< /Length (\d+) /Filter /FlateDecode >>\nstream\n")
_SHOW = re.compile(r"/F(\d) ([\d.]+) Tf ([\d.]+) ([\d.]+) Td \(((?:\\.|[^\\)])*)\) Tj")


def read_text(pdf):
    """The text of each page as (x, y, bold, text) runs, in drawing order."""
    pages = []
    for match in _STREAM.finditer(pdf):
        start = match.end()
        data = zlib.decompress(pdf[start:start + int(match[1])]).decode("latin-1")
        runs = []
        for line in data.splitlines():
            shown = _SHOW.search(line)
            if shown:
                runs.append((float(shown[3]), float(shown[4]), shown[1] == "2",
                             unescape(shown[5])))
        pages.append(runs)
    return pages
