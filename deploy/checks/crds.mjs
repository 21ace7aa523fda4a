// Validates custom resources against their CRDs' schemas, offline: the
// schemas come compiled in the npm packages of kubernetes-models
// (@kubernetes-models/keda, @kubernetes-models/prometheus-operator).
//   node crds.mjs NODE_MODULES_PARENT CRDS.json
// CRDS.json is a JSON list of objects (check_k8s.py --crd-json). A kind
// without a schema here fails: add its package rather than skip it.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [modulesDir, file] = process.argv.slice(2);
if (!modulesDir || !file) {
  console.error("usage: node crds.mjs NODE_MODULES_PARENT CRDS.json");
  process.exit(2);
}

// apiVersion -> [package, module inside it]
const SCHEMAS = {
  "keda.sh/v1alpha1": ["@kubernetes-models/keda", "keda.sh/v1alpha1"],
  "monitoring.coreos.com/v1": ["@kubernetes-models/prometheus-operator", "monitoring.coreos.com/v1"],
};

const require = createRequire(path.join(path.resolve(modulesDir), "package.json"));

async function modelFor(apiVersion) {
  const entry = SCHEMAS[apiVersion];
  if (!entry) return null;
  const pkgJson = require.resolve(`${entry[0]}/package.json`);
  const url = pathToFileURL(path.join(path.dirname(pkgJson), entry[1], "index.js"));
  return import(url.href);
}

const objects = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
for (const obj of objects) {
  const name = `${obj.kind}/${obj.metadata?.name} (${obj.apiVersion})`;
  const models = await modelFor(obj.apiVersion);
  const Model = models?.[obj.kind];
  if (!Model) {
    console.error(`${file}: ${name}: no schema for this kind`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.error(`${file}: ${name}: valid`);
  } catch (e) {
    console.error(`${file}: ${name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
