/**
 * The XML reader behind domain definitions: what it accepts and refuses, and edits by position
 * that leave every other byte as written.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { attribute, child, escapeAttribute, parseXml, XmlEdits, XmlError } from "../../src/sources/xml.js";

describe("parseXml", () => {
  it("reads elements, attributes in either quote, text, comments, CDATA, the declaration and references", () => {
    const text = `\ufeff<?xml version="1.0"?>\n<!-- a comment -->\n<a x='1' y="two &amp; &lt;3&gt; &quot;q&quot; &apos;s&apos; &#65;&#x42;">\n  <b/>\n  <c>t&amp;u<![CDATA[<raw & text>]]><!-- inner --></c>\n</a>\n<!-- after -->\n`;
    const root = parseXml(text);
    expect(root.name).toBe("a");
    expect(attribute(root, "x")).toBe("1");
    expect(attribute(root, "y")).toBe(`two & <3> "q" 's' AB`);
    expect(root.children.map((c) => c.name)).toEqual(["b", "c"]);
    expect(child(root, "c")?.text).toBe("t&u<raw & text>");
    const b = child(root, "b");
    expect(text.slice(b?.start, b?.end)).toBe("<b/>");
    const c = child(root, "c");
    expect(text.slice(c?.contentStart, c?.contentEnd)).toBe("t&amp;u<![CDATA[<raw & text>]]><!-- inner -->");
  });

  it.each([
    ["a document type declaration", `<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>`, /document type/],
    ["an unknown entity", `<a>&e;</a>`, /unknown entity/],
    ["an unterminated reference", `<a x="&amp"/>`, /unterminated reference/],
    ["a surrogate character reference", `<a>&#xD800;</a>`, /bad character reference/],
    ["a mismatched end tag", `<a><b></a></b>`, /<\/a> closes <b>/],
    ["an unclosed element", `<a><b/>`, /not closed/],
    ["an attribute given twice", `<a x="1" x="2"/>`, /given twice/],
    ["an unquoted attribute", `<a x=1/>`, /quoted value/],
    ["attributes without space between", `<a x="1"y="2"/>`, /white space/],
    ["< in an attribute value", `<a x="<"/>`, /"<"/],
    ["text after the root", `<a/>junk`, /after the root/],
    ["two roots", `<a/><b/>`, /after the root/],
    ["nothing", ``, /expected an element/],
    ["an unterminated comment", `<a><!-- x </a>`, /unterminated comment/],
  ])("refuses %s", (_, text, message) => {
    expect(() => parseXml(text)).toThrow(XmlError);
    expect(() => parseXml(text)).toThrow(message);
  });
});

describe("XmlEdits", () => {
  it("changes only the spans edited", () => {
    const text = `<d>\n  <name>old</name>\n  <uuid>u</uuid>\n  <s  file = "/a&amp;b" other='k'/>\n</d>\n`;
    const root = parseXml(text);
    const s = child(root, "s");
    const file = s?.attributes.find((a) => a.name === "file");
    const name = child(root, "name");
    const uuid = child(root, "uuid");
    if (file === undefined || name === undefined || uuid === undefined) throw new Error("fixture");
    const edits = new XmlEdits();
    edits.setAttribute(file, `/new "q" & <x>`);
    edits.replace(name.contentStart, name.contentEnd, "new");
    edits.remove(text, uuid);
    const out = edits.apply(text);
    expect(out).toBe(`<d>\n  <name>new</name>\n  <s  file = "/new &quot;q&quot; &amp; &lt;x>" other='k'/>\n</d>\n`);
    expect(attribute(child(parseXml(out), "s") ?? root, "file")).toBe(`/new "q" & <x>`);
    const renamed = new XmlEdits();
    renamed.renameAttribute(file, "dev", "/dev/x");
    expect(renamed.apply(text)).toContain(`<s  dev="/dev/x" other='k'/>`);
  });

  it("refuses overlapping edits", () => {
    const edits = new XmlEdits();
    edits.replace(0, 4, "a");
    edits.replace(2, 6, "b");
    expect(() => edits.apply("0123456789")).toThrow(/overlapping/);
  });

  it("an attribute set to any text reads back as that text, in either quote", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme" }), fc.constantFrom<"'" | '"'>("'", '"'), (value, quote) => {
        const text = `<a v=${quote}x${quote}/>`;
        const a = parseXml(text).attributes[0];
        if (a === undefined) throw new Error("no attribute");
        const edits = new XmlEdits();
        edits.setAttribute(a, value);
        const out = edits.apply(text);
        expect(attribute(parseXml(out), "v")).toBe(value);
        expect(out.startsWith("<a v=")).toBe(true);
        expect(escapeAttribute(value, quote)).not.toMatch(/[<\n\r\t]/);
      }),
    );
  });
});
