"""The OpenAPI document: served at /v1/openapi.json exactly as kept in docs/, accepted by a
standard linter (Redocly), and true: real answers of a running hangard, errors included,
validate against the schemas it declares for them. (That every routed path is documented,
and the reverse, is checked against the router's own table by the unit tests.)"""
import json
import os
import subprocess

import jsonschema

import harness
from harness import DaemonTest
from imageserver import make_busybox_rootfs_tar

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC_PATH = os.path.join(ROOT, "docs", "openapi.json")


class OpenApi(DaemonTest):
    qemu = harness.FAKE_QEMU

    def setUp(self):
        super().setUp()
        with open(DOC_PATH) as f:
            self.doc = json.load(f)

    def check(self, method, path, status, body, template=None):
        """Validates `body` against the schema documented for (path, method, status)."""
        op = self.doc["paths"][template or path][method.lower()]
        self.assertIn(str(status), op["responses"], f"{method} {path} answered {status}")
        resp = op["responses"][str(status)]
        if "$ref" in resp:
            resp = self.doc["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        schema = resp["content"]["application/json"]["schema"]
        # Resolve "#/components/..." against the whole document (JSON Schema 2020-12).
        wrapped = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                   "components": self.doc["components"], **schema}
        jsonschema.Draft202012Validator(wrapped).validate(body)

    def test_served_document_is_the_repositorys_and_lints_clean(self):
        status, served = self.daemon.request("GET", "/v1/openapi.json")
        self.assertEqual(status, 200)
        self.assertEqual(served, self.doc)
        self.assertEqual(self.doc["openapi"], "3.1.0")
        redocly = subprocess.run([os.path.join(ROOT, "scripts", "fetch-redocly.sh")],
                                 capture_output=True, text=True, timeout=600)
        self.assertEqual(redocly.returncode, 0, redocly.stderr)
        lint = subprocess.run([redocly.stdout.strip(), "lint", "--config",
                               os.path.join(ROOT, "redocly.yaml"), DOC_PATH],
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, REDOCLY_TELEMETRY="off",
                                       REDOCLY_SUPPRESS_UPDATE_NOTICE="true"))
        self.assertEqual(lint.returncode, 0, lint.stdout + lint.stderr)
        self.assertIn("valid", lint.stdout + lint.stderr)
        self.assertNotIn("warning", (lint.stdout + lint.stderr).lower())

    def test_real_answers_match_their_schemas(self):
        r = self.daemon.request
        for path in ("/v1", "/v1/health", "/v1/machines", "/v1/tokens", "/v1/certificates",
                     "/v1/images"):
            status, body = r("GET", path)
            self.check("GET", path, status, body)
        status, m = r("POST", "/v1/machines", {"name": "api1", "cpus": 2})
        self.created_uuids.append(m["uuid"])
        self.check("POST", "/v1/machines", status, m)
        self.check("GET", "/v1/machines/api1", *r("GET", "/v1/machines/api1"),
                   template="/v1/machines/{name}")
        self.check("PATCH", "/v1/machines/api1",
                   *r("PATCH", "/v1/machines/api1", {"description": "d"}),
                   template="/v1/machines/{name}")
        act = "/v1/machines/{name}/actions/{action}"
        self.check("POST", act, *r("POST", "/v1/machines/api1/actions/start"), template=act)
        status, ref = r("POST", "/v1/machines/api1/actions/pause?wait=false")
        self.check("POST", act, status, ref, template=act)
        harness.wait_for(lambda: r("GET", "/v1/operations/" + ref["operation"])[1]["status"]
                         != "running", 30, "the operation to end")
        self.check("GET", "/v1/operations/x", *r("GET", "/v1/operations/" + ref["operation"]),
                   template="/v1/operations/{id}")
        self.check("GET", "/v1/machines", *r("GET", "/v1/machines?state=paused"))
        self.check("GET", "/v1/machines", *r("GET", "/v1/machines?limit=1&fields=compact"))
        self.check("GET", "/v1/machines", *r("GET", "/v1/machines?limit=1&after=a"))
        self.check("GET", "/v1/machines", *r("GET", "/v1/machines?limit=0"))
        status, tok = r("POST", "/v1/tokens", {"name": "t1"})
        self.check("POST", "/v1/tokens", status, tok)
        # Errors: each documented with the shape they really have.
        self.check("POST", "/v1/machines", *r("POST", "/v1/machines", raw="{"))
        self.check("POST", "/v1/machines", *r("POST", "/v1/machines", {"name": "api1"}))
        self.check("POST", "/v1/machines", *r("POST", "/v1/machines", {"name": "x", "cpus": 0}))
        self.check("POST", "/v1/machines", *r("POST", "/v1/machines", {"name": "../x"}))
        self.check("GET", "/v1/machines/n", *r("GET", "/v1/machines/nothere"),
                   template="/v1/machines/{name}")
        self.check("POST", act, *r("POST", "/v1/machines/api1/actions/start"), template=act)
        self.check("DELETE", "/v1/machines/api1", *r("DELETE", "/v1/machines/api1"),
                   template="/v1/machines/{name}")
        self.check("DELETE", "/v1/machines/api1", *r("DELETE", "/v1/machines/api1?force=true"),
                   template="/v1/machines/{name}")
        self.check("GET", "/v1/events", *r("GET", "/v1/events"))
        # Images: an import as an operation, the image, the list, errors.
        tarball = os.path.join(self.state_dir, "rootfs.tar.gz")
        make_busybox_rootfs_tar(tarball, "gz")
        status, ref = r("POST", "/v1/images", {"name": "img", "source": {"type": "file",
                                                                        "path": tarball}})
        self.check("POST", "/v1/images", status, ref)
        harness.wait_for(lambda: r("GET", "/v1/operations/" + ref["operation"])[1]["status"]
                         != "running", 30, "the import to end")
        self.check("GET", "/v1/operations/x", *r("GET", "/v1/operations/" + ref["operation"]),
                   template="/v1/operations/{id}")
        self.check("GET", "/v1/images/n", *r("GET", "/v1/images/img"), template="/v1/images/{name}")
        self.check("GET", "/v1/images", *r("GET", "/v1/images"))
        self.check("POST", "/v1/images", *r("POST", "/v1/images", {"name": "img", "source": {
            "type": "file", "path": tarball}}))
        self.check("POST", "/v1/images", *r("POST", "/v1/images?wait=true", {"name": "img2",
                   "source": {"type": "file", "path": tarball}}))
        self.check("GET", "/v1/images/remote", *r("GET", "/v1/images/remote?type=lxc&server="
                                                         "https://127.0.0.1:1"))
        self.check("DELETE", "/v1/images/n", *r("DELETE", "/v1/images/img"),
                   template="/v1/images/{name}")
        self.check("DELETE", "/v1/images/n", *r("DELETE", "/v1/images/img"),
                   template="/v1/images/{name}")
        status, body = r("GET", "/v1/nothere")
        self.assertEqual((status, body["error"]["code"]), (404, "not_found"))
        jsonschema.Draft202012Validator(
            {**self.doc["components"]["schemas"]["Error"], "components": self.doc["components"]}
        ).validate(body)


if __name__ == "__main__":
    harness.main()
