/**
 * A small, strict XML reader for libvirt's domain definitions: elements, attributes, text,
 * comments, CDATA and the XML declaration, with the five predefined entities and character
 * references. It keeps where each element and attribute value lies in the text, so a definition
 * can be edited in place (XmlEdits) and every byte the edit does not touch stays as written.
 * A document type declaration is refused: libvirt writes none, and it could define entities.
 */

export class XmlError extends Error {}

export interface XmlAttribute {
  readonly name: string;
  /** The value with entities and character references resolved. */
  readonly value: string;
  /** Where the name starts in the text. */
  readonly nameStart: number;
  /** The value's span in the text, between its quotes. */
  readonly valueStart: number;
  readonly valueEnd: number;
  /** The quote it is written with. */
  readonly quote: "'" | '"';
}

export interface XmlElement {
  readonly name: string;
  readonly attributes: readonly XmlAttribute[];
  readonly children: readonly XmlElement[];
  /** The element's text content (its own, not its children's), entities resolved. */
  readonly text: string;
  /** From its start tag's "<" to just after its end tag's ">" (or the "/>" of an empty element). */
  readonly start: number;
  readonly end: number;
  /** Just after the start tag's ">" and at the end tag's "<" (both end for an empty element). */
  readonly contentStart: number;
  readonly contentEnd: number;
}

const NAME = /[A-Za-z_:][-A-Za-z0-9._:]*/y;
const SPACE = /[ \t\r\n]*/y;
const ENTITIES: Readonly<Record<string, string>> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/** The attribute's value, or undefined where the element has none of that name. */
export function attribute(e: XmlElement, name: string): string | undefined {
  return e.attributes.find((a) => a.name === name)?.value;
}

/** The element's children of that name. */
export function childrenNamed(e: XmlElement, name: string): XmlElement[] {
  return e.children.filter((c) => c.name === name);
}

/** The element's first child of that name. */
export function child(e: XmlElement, name: string): XmlElement | undefined {
  return e.children.find((c) => c.name === name);
}

/** Resolves entities and character references in text or an attribute value. */
function decode(raw: string, at: number): string {
  return raw.replace(/&([^;&<]*);?/g, (whole, ref: string, offset: number) => {
    if (!whole.endsWith(";")) throw new XmlError(`unterminated reference at offset ${at + offset}`);
    if (ref.startsWith("#")) {
      const code = ref.startsWith("#x") ? Number.parseInt(ref.slice(2), 16) : /^#[0-9]+$/.test(ref) ? Number.parseInt(ref.slice(1), 10) : Number.NaN;
      if (!Number.isInteger(code) || code <= 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) throw new XmlError(`bad character reference &${ref}; at offset ${at + offset}`);
      return String.fromCodePoint(code);
    }
    const e = ENTITIES[ref];
    if (e === undefined) throw new XmlError(`unknown entity &${ref}; at offset ${at + offset}`);
    return e;
  });
}

/** Escapes text for an attribute value written with the given quote. */
export function escapeAttribute(value: string, quote: "'" | '"'): string {
  return value.replace(/[&<"'\r\n\t]/g, (c) => {
    if (c === "&") return "&amp;";
    if (c === "<") return "&lt;";
    if (c === quote) return quote === '"' ? "&quot;" : "&apos;";
    if (c === "'" || c === '"') return c;
    return `&#${c.charCodeAt(0)};`;
  });
}

/** Escapes text content. */
export function escapeText(value: string): string {
  return value.replace(/[&<>]/g, (c) => (c === "&" ? "&amp;" : c === "<" ? "&lt;" : "&gt;"));
}

/** Parses a whole document and returns its root element. */
export function parseXml(text: string): XmlElement {
  let pos = 0;
  const fail = (what: string): never => {
    throw new XmlError(`${what} at offset ${pos}`);
  };
  const skipSpace = (): void => {
    SPACE.lastIndex = pos;
    SPACE.exec(text);
    pos = SPACE.lastIndex;
  };
  const name = (): string => {
    NAME.lastIndex = pos;
    const m = NAME.exec(text);
    if (m === null) return fail("expected a name");
    pos = NAME.lastIndex;
    return m[0];
  };
  const skipTo = (end: string, what: string): void => {
    const i = text.indexOf(end, pos);
    if (i < 0) fail(`unterminated ${what}`);
    pos = i + end.length;
  };
  /** Comments, processing instructions and white space between elements; false at anything else. */
  const misc = (): boolean => {
    skipSpace();
    if (text.startsWith("<!--", pos)) skipTo("-->", "comment");
    else if (text.startsWith("<?", pos)) skipTo("?>", "processing instruction");
    else if (text.startsWith("<!DOCTYPE", pos)) fail("a document type declaration is not accepted");
    else return false;
    return true;
  };
  const element = (): XmlElement => {
    const start = pos;
    if (text[pos] !== "<") fail("expected an element");
    pos++;
    const tag = name();
    const attributes: XmlAttribute[] = [];
    for (;;) {
      const before = pos;
      skipSpace();
      if (text.startsWith("/>", pos)) {
        pos += 2;
        return { name: tag, attributes, children: [], text: "", start, end: pos, contentStart: pos, contentEnd: pos };
      }
      if (text[pos] === ">") {
        pos++;
        break;
      }
      if (pos === before) fail("expected white space before an attribute");
      const nameStart = pos;
      const attr = name();
      skipSpace();
      if (text[pos] !== "=") fail(`expected = after attribute ${attr}`);
      pos++;
      skipSpace();
      const quote = text[pos];
      if (quote !== "'" && quote !== '"') return fail(`expected a quoted value for attribute ${attr}`);
      const valueStart = pos + 1;
      const valueEnd = text.indexOf(quote, valueStart);
      if (valueEnd < 0) fail(`unterminated value of attribute ${attr}`);
      const raw = text.slice(valueStart, valueEnd);
      if (raw.includes("<")) fail(`"<" in the value of attribute ${attr}`);
      if (attributes.some((a) => a.name === attr)) fail(`attribute ${attr} given twice`);
      attributes.push({ name: attr, value: decode(raw, valueStart), nameStart, valueStart, valueEnd, quote });
      pos = valueEnd + 1;
    }
    const contentStart = pos;
    const children: XmlElement[] = [];
    let content = "";
    for (;;) {
      if (pos >= text.length) fail(`element ${tag} is not closed`);
      if (text.startsWith("</", pos)) {
        const contentEnd = pos;
        pos += 2;
        const closing = name();
        if (closing !== tag) fail(`</${closing}> closes <${tag}>`);
        skipSpace();
        if (text[pos] !== ">") fail(`expected > after </${closing}`);
        pos++;
        return { name: tag, attributes, children, text: content, start, end: pos, contentStart, contentEnd };
      }
      if (text.startsWith("<!--", pos)) skipTo("-->", "comment");
      else if (text.startsWith("<![CDATA[", pos)) {
        const from = pos + 9;
        skipTo("]]>", "CDATA section");
        content += text.slice(from, pos - 3);
      } else if (text.startsWith("<?", pos)) skipTo("?>", "processing instruction");
      else if (text[pos] === "<") children.push(element());
      else {
        const next = text.indexOf("<", pos);
        const until = next < 0 ? text.length : next;
        content += decode(text.slice(pos, until), pos);
        pos = until;
      }
    }
  };
  if (text.charCodeAt(0) === 0xfeff) pos = 1;
  while (misc());
  const root = element();
  while (misc());
  if (pos !== text.length) fail("text after the root element");
  return root;
}

/** Edits to a document's text by position, applied together; each must cover its own span. */
export class XmlEdits {
  readonly #edits: { start: number; end: number; text: string }[] = [];

  replace(start: number, end: number, text: string): void {
    this.#edits.push({ start, end, text });
  }

  /** Sets an attribute's value, keeping its quote. */
  setAttribute(a: XmlAttribute, value: string): void {
    this.replace(a.valueStart, a.valueEnd, escapeAttribute(value, a.quote));
  }

  /** Renames an attribute and sets its value. */
  renameAttribute(a: XmlAttribute, name: string, value: string): void {
    this.replace(a.nameStart, a.valueEnd + 1, `${name}=${a.quote}${escapeAttribute(value, a.quote)}${a.quote}`);
  }

  /** Removes an element, with the white space before it on its line. */
  remove(text: string, e: XmlElement): void {
    let start = e.start;
    while (start > 0 && (text[start - 1] === " " || text[start - 1] === "\t")) start--;
    if (start > 0 && text[start - 1] === "\n") start--;
    this.replace(start, e.end, "");
  }

  /** The edited text; overlapping edits are refused. */
  apply(text: string): string {
    const edits = [...this.#edits].sort((a, b) => a.start - b.start);
    let out = "";
    let at = 0;
    for (const e of edits) {
      if (e.start < at) throw new XmlError("overlapping edits");
      out += text.slice(at, e.start) + e.text;
      at = e.end;
    }
    return out + text.slice(at);
  }
}
