// YAML documents ⇄ Resources, as `flotilla apply -f` reads them.
import { parseAllDocuments, stringify } from "yaml";
import { fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { ResourceSchema, type Resource } from "./gen/flotilla/v1alpha1/resource_pb.js";

/** parseResources reads multi-document YAML; it throws with the document, line and column of the first problem. */
export function parseResources(text: string): Resource[] {
  const out: Resource[] = [];
  const docs = parseAllDocuments(text);
  docs.forEach((doc, i) => {
    const where = `document ${i + 1}`;
    if (doc.errors.length > 0) {
      const e = doc.errors[0];
      const pos = e.linePos?.[0];
      throw new Error(`${where}${pos ? `, line ${pos.line}, column ${pos.col}` : ""}: ${e.message.split("\n")[0]}`);
    }
    const v = doc.toJS() as JsonValue;
    if (v === null || v === undefined) return; // an empty document
    try {
      out.push(fromJson(ResourceSchema, v));
    } catch (e) {
      throw new Error(`${where}: ${(e as Error).message}`);
    }
  });
  if (out.length === 0) throw new Error("no document: write one or more resources (apiVersion, kind, metadata, spec)");
  return out;
}

/** resourceYAML is a stored resource as YAML to edit: its etag stays (a save is refused if someone wrote since), read-only fields and status go. */
export function resourceYAML(r: Resource): string {
  const j = toJson(ResourceSchema, r) as { [k: string]: JsonValue };
  delete j["status"];
  const md = (j["metadata"] ?? {}) as { [k: string]: JsonValue };
  for (const k of ["fqn", "createTime", "updateTime", "revision"]) delete md[k];
  // Sorted keys: the server's maps come in no fixed order, and the same
  // resource must read the same every time.
  return stringify(j, { sortMapEntries: true });
}
