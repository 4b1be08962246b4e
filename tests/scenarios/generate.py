#!/usr/bin/env python3
"""Writes the scenario corpus: recorded observations -> expected findings, one directory per scenario.

Run from anywhere: `python3 tests/scenarios/generate.py` rewrites every scenario directory next to this
file; `--check` only reports directories whose files differ from what this script would write.
Deterministic: fixed seeds, no wall clock. The output is committed; monitor/tests/scenarios.rs replays it.

Observations follow d-spec.md (metadata only). Fingerprints are made-up `hmac-sha256:` strings; the
"secrets" listed under `never:` appear nowhere in the observations, as in a real recording.
"""

import hashlib
import json
import random
import shutil
import statistics
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHIPPED_DATA_SOURCES = (REPO / "rules" / "data-sources.yaml").read_text()

# --- identities ------------------------------------------------------------------------------------


def k8s(ns, sa, pod, image, node="node-1", owner=None):
    ident = {
        "id": f"spiffe://clinic.example/ns/{ns}/sa/{sa}",
        "kind": "kubernetes",
        "namespace": ns,
        "service_account": sa,
        "pod": pod,
        "pod_uid": hashlib.sha256(pod.encode()).hexdigest()[:8] + "-4c1e-4f0a-9d2b-" + hashlib.sha256(pod.encode()).hexdigest()[8:20],
        "container": "app",
        "image": image,
    }
    if owner:
        ident["owner"] = owner
    ident["node"] = node
    return ident


def systemd(unit, user, uid, node):
    return {
        "id": f"spiffe://clinic.example/node/{node}/unit/{unit}",
        "kind": "systemd",
        "unit": unit,
        "uid": uid,
        "user": user,
        "node": node,
    }


MED = k8s("clinical-ai", "med-summarizer", "med-summarizer-7d9f6c5b8-x2k4q",
          "registry.clinic.example/clinical-ai/med-summarizer:2.4.1", owner="ReplicaSet/med-summarizer-7d9f6c5b8")
MED_B = dict(MED, pod="med-summarizer-7d9f6c5b8-p9w2m", node="node-2")
DISCHARGE = k8s("clinical-ai", "discharge-writer", "discharge-writer-5b6c7d-qq8zt",
                "registry.clinic.example/clinical-ai/discharge-writer:1.2.0", owner="ReplicaSet/discharge-writer-5b6c7d")
TRIAGE = k8s("clinical-ai", "triage-bot", "triage-bot-66c8f9-lm3vd",
             "registry.clinic.example/clinical-ai/triage-bot:0.9.3", owner="ReplicaSet/triage-bot-66c8f9", node="node-3")
DEBUG = k8s("clinical-ai", "default", "debug-shell", "docker.io/nicolaka/netshoot:v0.13", node="node-1")
JUPYTER = k8s("research", "jupyter", "jupyter-dr-lee-0", "quay.io/jupyter/scipy-notebook:2026-10-06",
              owner="StatefulSet/jupyter-dr-lee", node="node-4")
FITNESS = k8s("patient-apps", "fitness-sync", "fitness-sync-84d5b7c9f-6hjkw",
              "registry.clinic.example/patient-apps/fitness-sync:3.1.0", owner="ReplicaSet/fitness-sync-84d5b7c9f", node="node-2")
BREAKGLASS = k8s("platform", "breakglass-admin", "breakglass-toolbox", "registry.clinic.example/platform/toolbox:2026.11",
                 node="node-1")
QUALITY = k8s("analytics", "quality-measures", "quality-measures-29371440-8kq2x",
              "registry.clinic.example/analytics/quality-measures:5.0.2", owner="Job/quality-measures-29371440", node="node-3")
SEPSIS = k8s("clinical-ai", "sepsis-alerts", "sepsis-alerts-6f7d8c-2lq9r",
             "registry.clinic.example/clinical-ai/sepsis-alerts:1.0.0", owner="ReplicaSet/sepsis-alerts-6f7d8c")
CLAIMS = systemd("claims-batch.service", "billing", 1001, "billing-1")
PACS_BACKUP = systemd("pacs-backup.service", "pacs", 1002, "pacs-1")
PACS_ARCHIVER = systemd("pacs-archiver.service", "pacs", 1002, "pacs-1")
IMAGING_SYNC = systemd("imaging-sync.service", "pacs", 1002, "pacs-1")

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SA_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
FHIR = "fhir.ehr.example.org"
ANTHROPIC = "api.anthropic.com"
FITNESS_API = "api.fitness.example.net"
PAYER = "claims.payer.example.com"
BH_NOTES = "bh-notes.internal.example.org"
K8S_ISS = "https://kubernetes.default.svc"

# --- time and credentials --------------------------------------------------------------------------


def T(s):
    """`2026-11-23T10:00:00` (UTC) -> aware datetime."""
    return datetime.fromisoformat(s).replace(tzinfo=timezone.utc)


def epoch(dt):
    return int(dt.timestamp())


def stamp(dt):
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond * 1000:09d}Z"


def fp(seed):
    return "hmac-sha256:" + hashlib.sha256(seed.encode()).hexdigest()[:32]


def sa_jwt(ident, iat, ttl=3600, seed=None):
    """A projected Kubernetes service-account token issued at `iat` (datetime)."""
    i = epoch(iat)
    seed = seed or f"{ident['id']}@{i}/{ttl}"
    return {
        "kind": "jwt",
        "fingerprint": fp(seed),
        "vendor": "kubernetes",
        "token_type": "kubernetes_service_account_token",
        "long_lived": False,
        "jwt": {
            "iss": K8S_ISS,
            "sub": f"system:serviceaccount:{ident.get('namespace')}:{ident.get('service_account')}",
            "exp": i + ttl,
            "iat": i,
            "jti": hashlib.sha256(seed.encode()).hexdigest()[:8] + "-" + hashlib.sha256(seed.encode()).hexdigest()[8:12],
            "ttl_seconds": ttl,
        },
    }


def other_jwt(seed, iss, sub, iat, ttl):
    i = epoch(iat)
    return {
        "kind": "jwt",
        "fingerprint": fp(seed),
        "long_lived": False,
        "jwt": {"iss": iss, "sub": sub, "exp": i + ttl, "iat": i,
                "jti": hashlib.sha256(seed.encode()).hexdigest()[:12], "ttl_seconds": ttl},
    }


def anthropic_key(seed):
    return {"kind": "api_key", "fingerprint": fp(seed), "vendor": "anthropic",
            "token_type": "anthropic_api_key", "long_lived": True}


def bearer(seed):
    return {"kind": "bearer", "fingerprint": fp(seed)}


def basic(seed, username):
    return {"kind": "basic", "fingerprint": fp(seed), "long_lived": True, "username": username}


def aws(seed, access_key_id):
    return {"kind": "aws_sigv4", "fingerprint": fp(seed), "vendor": "aws",
            "token_type": "aws_access_key" if access_key_id.startswith("AKIA") else "aws_temporary_access_key",
            "long_lived": access_key_id.startswith("AKIA"), "access_key_id": access_key_id}


# --- observations ----------------------------------------------------------------------------------


class Recording:
    """Observations in time order (stable for equal times, as a recorder would write them)."""

    def __init__(self):
        self.rows = []

    def add(self, t, ident, pid, exe, kind, **fields):
        o = {"time": stamp(t), "identity": ident, "pid": pid}
        if exe:
            o["exe"] = exe
        o["kind"] = kind
        o.update(fields)
        self.rows.append((t, len(self.rows), o))

    def exec(self, t, ident, pid, exe):
        self.add(t, ident, pid, exe, "exec")

    def open(self, t, ident, pid, exe, path, result=3):
        self.add(t, ident, pid, exe, "file_open", path=path, result=result)

    def connect(self, t, ident, pid, exe, address, name=None):
        f = {"address": address}
        if name:
            f["name"] = name
        self.add(t, ident, pid, exe, "connect", **f)

    def call(self, t, ident, pid, exe, host, method, path, status=200, req=512, resp=4096, creds=()):
        f = {"host": host, "method": method, "path": path, "status": status,
             "request_bytes": req, "response_bytes": resp}
        if creds:
            f["credentials"] = list(creds)
        self.add(t, ident, pid, exe, "api_call", **f)

    def lines(self):
        return [json.dumps(o, separators=(",", ":")) for _, _, o in sorted(self.rows, key=lambda r: (r[0], r[1]))]


def summarize(rec, t, jwt, key, ident=MED, pid=4242, rng=None, meds_path="/R4/MedicationRequest"):
    """One medication summary: the medication list, the patient, one Claude call. Returns the end time."""
    rng = rng or random.Random(0)
    rec.call(t, ident, pid, "/app/summarizer", FHIR, "GET", meds_path, req=412,
             resp=rng.randrange(8_000, 40_000), creds=[jwt])
    t += timedelta(milliseconds=rng.randrange(80, 300))
    rec.call(t, ident, pid, "/app/summarizer", FHIR, "GET", "/R4/Patient/{id}", req=398,
             resp=rng.randrange(2_000, 5_000), creds=[jwt])
    t += timedelta(milliseconds=rng.randrange(50, 200))
    rec.call(t, ident, pid, "/app/summarizer", ANTHROPIC, "POST", "/v1/messages", req=rng.randrange(12_000, 60_000),
             resp=rng.randrange(900, 4_000), creds=[key])
    return t + timedelta(seconds=rng.randrange(4, 20))


def med_start(rec, t, ident=MED, pid=4242):
    """Pod start: the summariser reads its projected token and connects to FHIR and Anthropic."""
    rec.exec(t, ident, pid, "/app/summarizer")
    rec.open(t + timedelta(milliseconds=40), ident, pid, "/app/summarizer", SA_TOKEN)
    rec.connect(t + timedelta(milliseconds=120), ident, pid, "/app/summarizer", "10.20.0.5:443", FHIR)
    rec.connect(t + timedelta(milliseconds=160), ident, pid, "/app/summarizer", "160.79.104.10:443", ANTHROPIC)


MED_KEY = anthropic_key("anthropic-key/med-summarizer/prod")
MED_KEY_SECRET = "sk-ant-api03-Zq7vW3xPfk2LrT9mB4nHc8YsQe1JdG6uVa0XoRiKtMwNpEgFhC5lUyDbSzAjI"
JWT_TEXT = "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5od2F0Y2gtdGVzdCJ9.eyJpc3MiOiJodHRwczovL2t1YmVybmV0ZXMuZGVmYXVsdC5zdmMifQ.c2lnbmF0dXJlLW5vdC1yZWFs"

# --- rules for scenarios that need their own --------------------------------------------------------


def contract(name, subject, owner, purpose, expires, allow, credentials, limits=None, break_glass=False):
    own = f"  owner: {owner}\n" if owner is not None else ""
    lim = f"  limits:\n{limits}" if limits else ""
    return f"""---
apiVersion: nhiwatch.dev/v1
kind: AccessContract
metadata:
  name: {name}
spec:
{subject}{own}  purpose: {purpose}
  expires: {expires}
  allow:
{allow}  credentials: {credentials}
{lim}  breakGlass: {'true' if break_glass else 'false'}
"""


def med_contract(shared="forbidden"):
    return contract(
        "med-summarizer", "  identity: spiffe://clinic.example/ns/clinical-ai/sa/med-summarizer\n",
        "clinical-ai@example.org", "Summarise medication lists for clinicians", "2027-03-31",
        """    dataSources: [ehr-medications, ehr-patients, llm-anthropic, k8s-sa-token]
    combinations:
      - [ehr-medications, llm-anthropic]
      - [ehr-medications, ehr-patients, llm-anthropic]
    endpoints:
      - {dataSource: ehr-medications, methods: [GET]}
      - {dataSource: ehr-patients, methods: [GET]}
      - {dataSource: llm-anthropic, methods: [POST]}
    secrets:
      - path: /var/run/secrets/kubernetes.io/serviceaccount/token
        executables: [/app/summarizer]
    destinations: [{host: "*.svc.cluster.local"}, {host: fhir.ehr.example.org}, {host: api.anthropic.com}]
""",
        f"{{kinds: [jwt, api-key], maxTokenTtl: 1h, shared: {shared}}}",
        "    - {dataSource: ehr-medications, requestsPerMinute: 600, bytesPerHour: 50MiB}\n")


def discharge_contract(shared):
    return contract(
        "discharge-writer", "  identity: spiffe://clinic.example/ns/clinical-ai/sa/discharge-writer\n",
        "clinical-ai@example.org", "Draft discharge letters from the patient's record for a physician to sign",
        "2027-06-30",
        """    dataSources: [ehr-patients, llm-anthropic]
    combinations: [[ehr-patients, llm-anthropic]]
    endpoints:
      - {dataSource: ehr-patients, methods: [GET]}
      - {dataSource: llm-anthropic, methods: [POST]}
""",
        f"{{kinds: [jwt, api-key], maxTokenTtl: 1h, shared: {shared}}}")


def sepsis_contract(owner):
    return contract(
        "sepsis-alerts", "  identity: spiffe://clinic.example/ns/clinical-ai/sa/sepsis-alerts\n",
        owner, "Score vital signs and labs for early sepsis warnings", "2027-09-30",
        """    dataSources: [ehr-observations]
    endpoints: [{dataSource: ehr-observations, methods: [GET]}]
""",
        "{kinds: [jwt], maxTokenTtl: 1h}")


QUALITY_CONTRACT = contract(
    "quality-measures", "  identity: spiffe://clinic.example/ns/analytics/sa/quality-measures\n",
    "population-health@example.org", "Compute the monthly quality measures (HEDIS) from the EHR", "2027-12-31",
    """    dataSources: [ehr-observations, ehr-patients, ehr-medications]
""",
    "{kinds: [jwt], maxTokenTtl: 1h}")


def pacs_contracts(listed):
    kinds = "{kinds: [basic, aws-sigv4]}" if listed else "{}"
    return contract(
        "pacs-archiver", '  selectors: ["systemd:unit:pacs-archiver.service", "unix:user:pacs"]\n',
        "radiology-it@example.org", "Move finished imaging studies to the cold archive and fetch lab PDFs",
        "2027-06-30",
        """    destinations:
      - host: imaging-archive.s3.eu-central-1.amazonaws.com
      - host: lab-gw.internal.example.org
""", kinds)


IMAGING_SYNC_CONTRACT = contract(
    "imaging-sync", '  selectors: ["systemd:unit:imaging-sync.service", "unix:user:pacs"]\n',
    "radiology-it@example.org", "Replicate the imaging archive index to the DR region", "2027-06-30",
    """    destinations: [{host: imaging-archive.s3.eu-central-1.amazonaws.com}]
""", "{}")

# --- scenario output ---------------------------------------------------------------------------------

SCENARIOS = []


def scenario(name, description, rec, findings, rules=None, config=None, never=(), data_sources=None):
    """`data_sources`: the scenario's own data-source catalogue (needs `rules`), else the shipped one."""
    SCENARIOS.append((name, description, rec, findings, rules, config, list(never), data_sources))


def f(rule, ident, count=None, **evidence):
    e = {"rule": rule, "identity": ident["id"]}
    if count is not None:
        e["count"] = count
    if evidence:
        e["evidence"] = evidence
    return e


def yaml_str(s):
    return json.dumps(s, ensure_ascii=False)


def expected_yaml(description, findings, never):
    out = [f"description: {yaml_str(description)}"]
    if not findings:
        out.append("findings: []")
    else:
        out.append("findings:")
        for e in findings:
            out.append(f"  - rule: {e['rule']}")
            out.append(f"    identity: {e['identity']}")
            if "count" in e:
                out.append(f"    count: {e['count']}")
            if "evidence" in e:
                out.append(f"    evidence: {json.dumps(e['evidence'], separators=(', ', ': '))}")
    if never:
        out.append("never:")
        for s in never:
            out.append(f"  - {yaml_str(s)}")
    return "\n".join(out) + "\n"


def files_of(sc):
    name, description, rec, findings, rules, config, never, data_sources = sc
    files = {
        "observations.jsonl": "\n".join(rec.lines()) + "\n",
        "expected.yaml": expected_yaml(description, findings, never),
    }
    if rules is not None:
        files["rules/data-sources.yaml"] = data_sources or SHIPPED_DATA_SOURCES
        files["rules/contracts.yaml"] = "# Contracts for this scenario only (generated by ../generate.py).\n" + rules
    if config is not None:
        files["config.yaml"] = config
    return files


# =====================================================================================================
# Scenarios
# =====================================================================================================


def s01_benign_med_summarizer_day():
    rec = Recording()
    rng = random.Random(1)
    day = T("2026-11-23T06:58:00")
    med_start(rec, day)
    rec.connect(day + timedelta(seconds=1), MED, 4242, "/app/summarizer", "10.96.12.40:6379",
                "redis-master.clinical-ai.svc.cluster.local")
    rec.connect(day + timedelta(seconds=2), MED, 4242, "/app/summarizer", "10.20.0.5:443")  # no name: only an address
    for hour in range(7, 19):
        start = T(f"2026-11-23T{hour:02d}:00:00")
        # kubelet rotates the projected token; the app re-reads it every hour, before the old one expires.
        jwt = sa_jwt(MED, start - timedelta(minutes=2))
        rec.open(start, MED, 4242, "/app/summarizer", SA_TOKEN)
        t = start + timedelta(seconds=rng.randrange(5, 60))
        while t < start + timedelta(minutes=50):
            path = rng.choice(["/R4/MedicationRequest", "/R4/MedicationStatement", "/R4/MedicationRequest"])
            t = summarize(rec, t, jwt, MED_KEY, rng=rng, meds_path=path)
            t += timedelta(seconds=rng.randrange(60, 420))
    scenario("01-benign-med-summarizer-day",
             "a working day of med-summarizer within its contract (token read by /app/summarizer, FHIR GETs with a 1h "
             "service-account JWT, Claude calls with its API key, a *.svc.cluster.local peer): no finding",
             rec, [], never=[MED_KEY_SECRET, JWT_TEXT])


ALL_UNGOVERNED = ("# The seeds' demand: every identity without a contract is reported, however little it does\n"
                  "# (the default reports only those that use credentials, secrets or data sources).\n"
                  "detectors:\n  ungoverned: {report: all}\n")


def ungoverned_recording():
    rec = Recording()
    t = T("2026-11-24T09:00:00")
    jwt = sa_jwt(TRIAGE, t - timedelta(minutes=10))
    for i in range(40):
        rec.call(t + timedelta(seconds=7 * i), TRIAGE, 311, "/usr/local/bin/triage-bot", FHIR, "GET", "/R4/Patient",
                 req=380, resp=6000 + 37 * i, creds=[jwt])
    # A backup job nobody wrote a contract for: two runs two hours apart, 20-minute gaps within a run.
    b = T("2026-11-24T02:00:05")
    rec.exec(b, PACS_BACKUP, 9120, "/usr/bin/rsync")
    rec.connect(b + timedelta(seconds=1), PACS_BACKUP, 9120, "/usr/bin/rsync", "10.40.1.20:873")
    rec.connect(T("2026-11-24T02:20:00"), PACS_BACKUP, 9120, "/usr/bin/rsync", "10.40.1.20:873")
    rec.connect(T("2026-11-24T02:40:00"), PACS_BACKUP, 9120, "/usr/bin/rsync", "10.40.1.20:873")
    rec.exec(T("2026-11-24T04:10:00"), PACS_BACKUP, 9377, "/usr/bin/rsync")
    rec.connect(T("2026-11-24T04:10:01"), PACS_BACKUP, 9377, "/usr/bin/rsync", "10.40.1.20:873")
    return rec


def s02_ungoverned():
    scenario("02-ungoverned-identity",
             "with detectors.ungoverned.report: all, activity of identities no contract governs: 40 calls in 5 "
             "minutes give one NHI-001 counting 40; a job active at 02:00-02:40 and again at 04:10 gives one NHI-001 "
             "per 1h ungoverned window (two)",
             ungoverned_recording(),
             [f("NHI-001", TRIAGE, count=40), f("NHI-001", PACS_BACKUP), f("NHI-001", PACS_BACKUP)],
             config=ALL_UNGOVERNED)


def s34_ungoverned_significant():
    scenario("34-ungoverned-significant-only",
             "the default detectors.ungoverned.report: significant on scenario 02's recording: triage-bot presents a "
             "token to the EHR and gets its NHI-001 counting 40; the backup job only starts rsync and connects to an "
             "unnamed address, so it is learned but not reported",
             ungoverned_recording(), [f("NHI-001", TRIAGE, count=40)])


def claims_run(rec, t, cred_payer, cred_fhir, claims=30, pid=7001):
    rec.exec(t, CLAIMS, pid, "/usr/bin/python3.11")
    rec.connect(t + timedelta(milliseconds=300), CLAIMS, pid, "/usr/bin/python3.11", "10.20.0.5:443", FHIR)
    rec.connect(t + timedelta(milliseconds=350), CLAIMS, pid, "/usr/bin/python3.11", "203.0.113.40:443", PAYER)
    t += timedelta(seconds=1)
    for i in range(claims):
        rec.call(t, CLAIMS, pid, "/usr/bin/python3.11", FHIR, "GET", "/R4/Patient", req=350, resp=3100 + i,
                 creds=[cred_fhir])
        t += timedelta(milliseconds=400)
        rec.call(t, CLAIMS, pid, "/usr/bin/python3.11", PAYER, "POST", "/v2/claims/submit", status=202,
                 req=8200 + 13 * i, resp=640, creds=[cred_payer])
        t += timedelta(seconds=9)
    rec.call(t, CLAIMS, pid, "/usr/bin/python3.11", PAYER, "GET", "/v2/remittances/{id}", req=300, resp=52_000,
             creds=[cred_payer])
    return t


def s03_s04_expiry():
    rec = Recording()
    claims_run(rec, T("2027-01-04T01:00:00"), bearer("payer-oauth/2027-01-04"), bearer("ehr-oauth/2027-01-04"))
    scenario("03-contract-expired",
             "claims-batch runs on 2027-01-04 under its contract that expired 2026-12-31 (shipped rules): NHI-002",
             rec, [f("NHI-002", CLAIMS)])
    rec = Recording()
    claims_run(rec, T("2026-12-31T23:48:00"), bearer("payer-oauth/2026-12-31"), bearer("ehr-oauth/2026-12-31"))
    scenario("04-contract-last-day",
             "claims-batch's nightly run late on 2026-12-31, the last day its contract is valid (it expires at the end "
             "of that day, UTC), with opaque bearer tokens as the contract asks: no finding",
             rec, [])


def sepsis_run(rec):
    t = T("2026-11-24T08:00:00")
    jwt = sa_jwt(SEPSIS, t - timedelta(minutes=3))
    rec.exec(t, SEPSIS, 610, "/usr/local/bin/sepsis-alerts")
    for i in range(20):
        rec.call(t + timedelta(seconds=15 * i + 2), SEPSIS, 610, "/usr/local/bin/sepsis-alerts", FHIR, "GET",
                 "/R4/Observation", req=420, resp=12_000 + 100 * i, creds=[jwt])


def s05_s06_owner():
    rec = Recording()
    sepsis_run(rec)
    scenario("05-contract-without-owner",
             "sepsis-alerts acts within a contract whose owner is empty: NHI-003 (the contract loads with a warning)",
             rec, [f("NHI-003", SEPSIS)], rules=sepsis_contract('""'))
    rec = Recording()
    sepsis_run(rec)
    scenario("06-contract-with-owner",
             "the same activity under the same contract with an owner: no finding",
             rec, [], rules=sepsis_contract("clinical-ai@example.org"))


def s07_undeclared_data_source():
    rec = Recording()
    t = T("2026-11-24T10:00:00")
    jwt = sa_jwt(MED, t - timedelta(minutes=5))
    med_start(rec, t)
    rng = random.Random(7)
    summarize(rec, t + timedelta(seconds=5), jwt, MED_KEY, rng=rng)
    # 20 minutes later, alone in its combination window: lab results, which the contract does not grant.
    for i in range(5):
        rec.call(T("2026-11-24T10:20:00") + timedelta(seconds=30 * i), MED, 4242, "/app/summarizer", FHIR, "GET",
                 "/R4/Observation", req=410, resp=18_000, creds=[jwt])
    scenario("07-undeclared-data-source",
             "med-summarizer reads lab results (ehr-observations), a data source its contract does not grant: NHI-010",
             rec, [f("NHI-010", MED, data_source="ehr-observations", classification="phi")])


def s08_undeclared_method():
    rec = Recording()
    t = T("2026-11-24T11:00:00")
    jwt = sa_jwt(MED, t - timedelta(minutes=5))
    med_start(rec, t)
    end = summarize(rec, t + timedelta(seconds=20), jwt, MED_KEY, rng=random.Random(8))
    for i in range(3):
        rec.call(end + timedelta(seconds=40 + i), MED, 4242, "/app/summarizer", FHIR, "DELETE",
                 "/R4/MedicationRequest/{id}", status=204, req=390, resp=0, creds=[jwt])
    scenario("08-undeclared-method",
             "med-summarizer DELETEs medication orders; ehr-medications is granted for GET only: NHI-011",
             rec, [f("NHI-011", MED, data_source="ehr-medications", method="DELETE")])


def s09_s10_destination():
    rec = Recording()
    t = T("2026-11-24T12:00:00")
    jwt = sa_jwt(MED, t - timedelta(minutes=5))
    med_start(rec, t)
    end = summarize(rec, t + timedelta(seconds=10), jwt, MED_KEY, rng=random.Random(9))
    rec.connect(end + timedelta(seconds=30), MED, 4242, "/app/summarizer", "198.51.100.23:443", "paste.example.net")
    rec.call(end + timedelta(seconds=31), MED, 4242, "/app/summarizer", "paste.example.net", "POST", "/api/v1/pastes",
             status=201, req=48_000, resp=210)
    scenario("09-undeclared-destination",
             "med-summarizer connects to and posts to paste.example.net, in no data source and not in its "
             "destinations: one NHI-012 (the connect and the call share the evidence key)",
             rec, [f("NHI-012", MED, destination="paste.example.net")])
    rec = Recording()
    t = T("2026-11-24T12:00:00")
    med_start(rec, t)
    rec.connect(t + timedelta(seconds=1), MED, 4242, "/app/summarizer", "10.96.12.40:6379",
                "redis-master.clinical-ai.svc.cluster.local")
    end = summarize(rec, t + timedelta(seconds=10), jwt, MED_KEY, rng=random.Random(10))
    rec.connect(end, MED, 4242, "/app/summarizer", "10.96.30.7:8080", "summaries.clinical-ai.svc.cluster.local")
    rec.call(end + timedelta(milliseconds=20), MED, 4242, "/app/summarizer", "summaries.clinical-ai.svc.cluster.local",
             "POST", "/v1/summaries", status=201, req=2_400, resp=120)
    rec.connect(end + timedelta(seconds=2), MED, 4242, "/app/summarizer", "10.96.0.10:443")
    scenario("10-destination-allowed",
             "med-summarizer stores its summary in an in-cluster service matched by the *.svc.cluster.local "
             "destination glob, and opens a connection known only by address: no finding",
             rec, [])


def s11_secret_by_shell():
    rec = Recording()
    t = T("2026-11-24T14:00:00")
    jwt = sa_jwt(MED, t - timedelta(minutes=5))
    med_start(rec, t)
    summarize(rec, t + timedelta(seconds=10), jwt, MED_KEY, rng=random.Random(11))
    # `kubectl exec -it med-summarizer -- sh`, then the shell reads the token.
    sh = T("2026-11-24T14:30:00")
    rec.exec(sh, MED, 5120, "/bin/sh")
    rec.open(sh + timedelta(seconds=14), MED, 5120, "/bin/sh", SA_TOKEN)
    rec.open(sh + timedelta(seconds=41), MED, 5120, "/bin/sh", SA_TOKEN)
    scenario("11-secret-read-by-shell",
             "a shell in the med-summarizer pod reads the service-account token, granted to /app/summarizer only: "
             "NHI-021",
             rec, [f("NHI-021", MED, file=SA_TOKEN, executable="/bin/sh")], never=[JWT_TEXT])


def s12_secret_without_grant():
    rec = Recording()
    t = T("2026-11-25T01:00:00")
    rec.exec(t, CLAIMS, 7301, "/usr/bin/python3.11")
    rec.open(t + timedelta(seconds=2), CLAIMS, 7301, "/usr/bin/python3.11", "/home/billing/.netrc")
    rec.open(t + timedelta(seconds=3), CLAIMS, 7301, "/usr/bin/python3.11", "/home/billing/.aws/credentials")
    scenario("12-secret-read-without-grant",
             "claims-batch (no secret grants) opens ~/.netrc and its AWS files: NHI-020 per file, and NHI-010 for the "
             "cloud-credentials data source the files belong to",
             rec, [f("NHI-020", CLAIMS, file="/home/billing/.netrc"),
                   f("NHI-020", CLAIMS, file="/home/billing/.aws/credentials"),
                   f("NHI-010", CLAIMS, data_source="cloud-credentials")])


def fitness_call(rec, t, kind, i, cred, pid=1707, resp=4096, req=256):
    rec.call(t, FITNESS, pid, "/usr/local/bin/fitness-sync", FITNESS_API, "GET", f"/v1/users/{{id}}/{kind}",
             req=req, resp=resp, creds=[cred])


def s13_fitness_benign():
    rec = Recording()
    t = T("2026-11-25T08:00:00")
    jwt = sa_jwt(FITNESS, t - timedelta(minutes=2))
    oauth = bearer("fitness-vendor-oauth/clinic")
    rec.exec(t, FITNESS, 1707, "/usr/local/bin/fitness-sync")
    rec.open(t + timedelta(milliseconds=30), FITNESS, 1707, "/usr/local/bin/fitness-sync", SA_TOKEN)
    rec.open(t + timedelta(milliseconds=31), FITNESS, 1707, "/usr/local/bin/fitness-sync", SA_CA)
    rec.connect(t + timedelta(milliseconds=200), FITNESS, 1707, "/usr/local/bin/fitness-sync", "192.0.2.80:443",
                FITNESS_API)
    rec.connect(t + timedelta(milliseconds=220), FITNESS, 1707, "/usr/local/bin/fitness-sync", "10.20.0.5:443", FHIR)
    t += timedelta(seconds=1)
    for i in range(60):
        fitness_call(rec, t, ["activities", "heartrate", "sleep"][i % 3], i, oauth)
        t += timedelta(milliseconds=300)
        rec.call(t, FITNESS, 1707, "/usr/local/bin/fitness-sync", FHIR, "POST", "/R4/Observation", status=201,
                 req=2_300, resp=800, creds=[jwt])
        t += timedelta(seconds=7)
    scenario("13-fitness-sync-benign",
             "fitness-sync reads its token with its own binary and the CA bundle (an allowed file data source without "
             "a secret grant), pulls fitness data and writes EHR observations with a bearer token and its 1h JWT: "
             "no finding",
             rec, [])


def s14_combination_not_allowed():
    rec = Recording()
    rec.open(T("2026-11-25T14:40:00"), FITNESS, 1707, "/usr/local/bin/fitness-sync", SA_TOKEN)
    t = T("2026-11-25T15:00:00")
    jwt = sa_jwt(FITNESS, T("2026-11-25T14:38:00"))
    oauth = bearer("fitness-vendor-oauth/clinic")
    for i in range(10):
        fitness_call(rec, t + timedelta(seconds=6 * i), "sleep", i, oauth)
    for i in range(3):
        rec.call(T("2026-11-25T15:04:00") + timedelta(seconds=10 * i), FITNESS, 1707, "/usr/local/bin/fitness-sync",
                 BH_NOTES, "GET", "/api/v2/notes", req=380, resp=26_000, creds=[jwt])
    scenario("14-combination-not-allowed",
             "fitness-sync reads psychotherapy notes minutes after fitness data: NHI-030 for the combination and "
             "NHI-010 since mental-health-records is not granted at all",
             rec, [f("NHI-030", FITNESS, data_sources=["fitness-app", "mental-health-records"]),
                   f("NHI-010", FITNESS, data_source="mental-health-records", classification="phi")])


QUALITY_CONFIG = """# The learning period shortened from 24h so that the scenario stays small.
detectors:
  combination: {window: 10m, learning: 2h}
"""


def quality_run(rec, learn_pairs, after_pairs):
    """Every 15 minutes from 00:00 one batch touching a pair of data sources; learning ends at 02:00."""
    paths = {"ehr-observations": "/R4/Observation", "ehr-patients": "/R4/Patient",
             "ehr-medications": "/R4/MedicationStatement"}
    start = T("2026-11-26T00:00:00")
    rec.exec(start, QUALITY, 88, "/usr/bin/java")
    slots = [(start + timedelta(minutes=15 * i), learn_pairs[i % len(learn_pairs)]) for i in range(8)]  # to 01:45
    slots += [(T("2026-11-26T02:30:00") + timedelta(minutes=30 * i), pair) for i, pair in enumerate(after_pairs)]
    for t, pair in slots:
        jwt = sa_jwt(QUALITY, t.replace(minute=0, second=0) - timedelta(minutes=1))
        for j, ds in enumerate(pair):
            for k in range(3):
                rec.call(t + timedelta(seconds=5 + 20 * j + k), QUALITY, 88, "/usr/bin/java", FHIR, "GET", paths[ds],
                         req=400, resp=30_000, creds=[jwt])


def s15_s16_combination_unseen():
    rec = Recording()
    quality_run(rec, [("ehr-patients", "ehr-observations")], [("ehr-medications", "ehr-patients")])
    scenario("15-combination-unseen",
             "quality-measures (contract without combination entries: unrestricted) learns patients+observations for "
             "2h, then combines medications with patients: NHI-031 for the unseen pair",
             rec, [f("NHI-031", QUALITY, data_sources=["ehr-medications", "ehr-patients"])],
             rules=QUALITY_CONTRACT, config=QUALITY_CONFIG)
    rec = Recording()
    quality_run(rec, [("ehr-patients", "ehr-observations"), ("ehr-medications", "ehr-patients")],
                [("ehr-medications", "ehr-patients"), ("ehr-patients", "ehr-observations")])
    scenario("16-combination-learned",
             "the same job sees both pairs during learning and only those after it: no finding",
             rec, [], rules=QUALITY_CONTRACT, config=QUALITY_CONFIG)


BASE_PATTERN = [10, 10, 9, 11, 10, 12, 8, 10, 11, 9]
REQ_BYTES, RESP_BYTES = 256, 4096


def fitness_baseline(rec, start, minutes, specials):
    """Per minute BASE_PATTERN requests to fitness-app, except minutes in `specials` (minute -> list of
    (requests, response bytes each)). Returns per-minute (requests, bytes) in order."""
    oauth = bearer("fitness-vendor-oauth/clinic")
    per_minute = []
    for m in range(minutes):
        t0 = start + timedelta(minutes=m)
        batches = specials.get(m, [(BASE_PATTERN[m % len(BASE_PATTERN)], RESP_BYTES)])
        n_total = sum(n for n, _ in batches)
        step = 57_000 // max(n_total, 1)
        i, reqs, byts = 0, 0, 0
        for n, resp in batches:
            for _ in range(n):
                t = t0 + timedelta(milliseconds=(0 if m == 0 and i == 0 else 1_000) + step * i)
                fitness_call(rec, t, ["activities", "heartrate", "sleep"][i % 3], i, oauth, resp=resp)
                i += 1
                reqs += 1
                byts += REQ_BYTES + resp
        per_minute.append((reqs, byts))
    return per_minute


def s17_s18_volume():
    start = T("2026-11-27T13:00:00")
    rec = Recording()
    spikes = {45: [(200, RESP_BYTES)], 58: [(1, 64 * 1024 * 1024)]}
    pm = fitness_baseline(rec, start, 60, spikes)
    exp_req = statistics.median([r for r, _ in pm[:45]])
    exp_bytes = statistics.median([b for _, b in pm[:58][-60:]])
    scenario("17-volume-spike",
             "after 45 quiet minutes (about 10 requests and 43 KB a minute), 200 requests in one minute and later a "
             "single 64 MiB download from fitness-app: NHI-040 for requests and for bytes, with observed vs expected",
             rec, [f("NHI-040", FITNESS, data_source="fitness-app", metric="requests", expected=exp_req),
                   f("NHI-040", FITNESS, data_source="fitness-app", metric="bytes",
                     observed=REQ_BYTES + 64 * 1024 * 1024, expected=exp_bytes)])
    rec = Recording()
    benign = {45: [(25, RESP_BYTES)], 58: [(1, 8 * 1024 * 1024)]}
    fitness_baseline(rec, start, 60, benign)
    # A new identity bursts before it has any history (warm-up): nothing to compare with yet.
    jwt = sa_jwt(MED, start - timedelta(minutes=4))
    for i in range(200):
        rec.call(start + timedelta(minutes=5, milliseconds=250 * i + 500), MED, 4242, "/app/summarizer", FHIR, "GET",
                 "/R4/MedicationRequest", req=412, resp=20_480, creds=[jwt])
    scenario("18-volume-within-baseline",
             "the same quiet baseline with a 25-request burst and an 8 MiB download (under the minimum volumes), and "
             "a 200-request burst from an identity still warming up: no finding",
             rec, [])


def s19_s20_limits():
    for name, burst, big, expect in [("19-limit-exceeded", 700, 50, True), ("20-limit-within", 550, 35, False)]:
        rec = Recording()
        t = T("2026-11-28T10:00:00")
        jwt = sa_jwt(MED, t - timedelta(minutes=5))
        for i in range(burst):
            rec.call(t + timedelta(milliseconds=80 * i), MED, 4242, "/app/summarizer", FHIR, "GET",
                     "/R4/MedicationRequest", req=412, resp=2_048, creds=[jwt])
        for i in range(big):
            rec.call(T("2026-11-28T10:05:00") + timedelta(seconds=24 * i), MED, 4242, "/app/summarizer", FHIR, "GET",
                     "/R4/MedicationStatement", req=420, resp=1_258_291, creds=[jwt])
        if expect:
            scenario(name,
                     "med-summarizer re-reads 700 medication lists in one minute (limit 600/min) and then about "
                     "63 MB within the hour (limit 50MiB/h): NHI-041 for requests and for bytes",
                     rec, [f("NHI-041", MED, data_source="ehr-medications", metric="requests", limit=600),
                           f("NHI-041", MED, data_source="ehr-medications", metric="bytes", limit=50 * 1024 * 1024)])
        else:
            scenario(name,
                     "the same catch-up job within its limits (550 in the minute, about 45 MB in the hour): no finding",
                     rec, [])


def med_some(rec, t, n, jwt, key=MED_KEY, seed=21):
    rng = random.Random(seed)
    for _ in range(n):
        t = summarize(rec, t, jwt, key, rng=rng)
        t += timedelta(seconds=40)
    return t


def s21_s23_shared():
    t = T("2026-11-30T09:00:00")
    jwt = sa_jwt(MED, t - timedelta(minutes=5))
    rec = Recording()
    med_some(rec, t, 12, jwt)
    nb = T("2026-11-30T10:00:00")
    for i in range(6):
        rec.call(nb + timedelta(seconds=45 * i), JUPYTER, 2201, "/opt/conda/bin/python3.12", ANTHROPIC, "POST",
                 "/v1/messages", req=9_000 + i, resp=2_000, creds=[MED_KEY])
    scenario("21-shared-key-leaked",
             "med-summarizer's Anthropic API key shows up in a research notebook that has no contract: NHI-050 on the "
             "notebook naming med-summarizer, and NHI-001",
             rec, [f("NHI-001", JUPYTER),
                   f("NHI-050", JUPYTER, credential={"kind": "api_key", "fingerprint": MED_KEY["fingerprint"]},
                     identities=[MED["id"]])],
             never=[MED_KEY_SECRET])

    def both(rec):
        med_some(rec, t, 8, jwt)
        dj = sa_jwt(DISCHARGE, T("2026-11-30T09:55:00"))
        d = T("2026-11-30T10:00:00")
        for i in range(5):
            rec.call(d + timedelta(seconds=60 * i), DISCHARGE, 3301, "/app/discharge-writer", FHIR, "GET",
                     "/R4/Patient", req=390, resp=7_000, creds=[dj])
            rec.call(d + timedelta(seconds=60 * i + 2), DISCHARGE, 3301, "/app/discharge-writer", ANTHROPIC, "POST",
                     "/v1/messages", req=30_000, resp=3_500, creds=[MED_KEY])

    rec = Recording()
    both(rec)
    scenario("22-shared-key-allowed",
             "med-summarizer and discharge-writer use one team API key and both contracts say shared: allowed: "
             "no finding",
             rec, [], rules=med_contract("allowed") + discharge_contract("allowed"), never=[MED_KEY_SECRET])
    rec = Recording()
    both(rec)
    scenario("23-shared-key-one-side-forbidden",
             "the same sharing, but med-summarizer's contract forbids it: NHI-050 when discharge-writer presents the key",
             rec, [f("NHI-050", DISCHARGE, credential={"kind": "api_key", "fingerprint": MED_KEY["fingerprint"]},
                     identities=[MED["id"]])],
             rules=med_contract("forbidden") + discharge_contract("allowed"), never=[MED_KEY_SECRET])


PAYER_PASSWORD = "Xk9#payer-B4tch!2026"
PAYER_BASIC_HEADER = "Y2xpbmljLWJhdGNoLTAxOlhrOSNwYXllci1CNHRjaCEyMDI2"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEYq"
LAB_PASSWORD = "labgw-Pa55word-0042"


def s24_s26_claims_credentials():
    rec = Recording()
    payer_jwt = other_jwt("payer-jwt/2026-11-26", "https://login.payer.example.com", "client:clinic-batch-01",
                          T("2026-11-26T00:58:00"), 900)
    claims_run(rec, T("2026-11-26T01:00:00"), payer_jwt, bearer("ehr-oauth/2026-11-26"))
    scenario("24-jwt-not-allowed",
             "claims-batch presents a 15-minute JWT to the payer; its contract allows bearer tokens only: NHI-051",
             rec, [f("NHI-051", CLAIMS, credential={"kind": "jwt", "fingerprint": payer_jwt["fingerprint"]})],
             never=[JWT_TEXT])
    rec = Recording()
    claims_run(rec, T("2026-11-26T01:00:00"), bearer("payer-oauth/2026-11-26"), bearer("ehr-oauth/2026-11-26"))
    scenario("25-bearer-allowed",
             "the same run with opaque bearer tokens, the kind its contract allows: no finding",
             rec, [])
    rec = Recording()
    cred = basic("payer-basic/clinic-batch-01", "clinic-batch-01")
    claims_run(rec, T("2026-11-26T01:00:00"), cred, bearer("ehr-oauth/2026-11-26"))
    scenario("26-basic-auth",
             "claims-batch falls back to HTTP Basic at the payer: NHI-052 (legacy) and NHI-051 (bearer only); the "
             "user name may appear, the password never",
             rec, [f("NHI-052", CLAIMS, credential={"kind": "basic", "fingerprint": cred["fingerprint"]}),
                   f("NHI-051", CLAIMS, credential={"kind": "basic", "fingerprint": cred["fingerprint"]})],
             never=[PAYER_PASSWORD, PAYER_BASIC_HEADER])


def pacs_run(rec, ident, key, lab=True, pid=6100):
    t = T("2026-11-27T22:00:00")
    rec.exec(t, ident, pid, "/usr/local/bin/pacs-archiver")
    for i in range(12):
        rec.call(t + timedelta(seconds=20 * i + 1), ident, pid, "/usr/local/bin/pacs-archiver",
                 "imaging-archive.s3.eu-central-1.amazonaws.com", "PUT", "/studies/{id}/series/{id}.tar", req=41_000_000,
                 resp=0, creds=[key])
    if lab:
        cred = basic("lab-gw/pacs", "pacs-archiver")
        rec.call(t + timedelta(minutes=5), ident, pid, "/usr/local/bin/pacs-archiver", "lab-gw.internal.example.org",
                 "GET", "/reports/{id}.pdf", req=300, resp=180_000, creds=[cred])
        return cred
    return None


def s27_s28_legacy():
    rec = Recording()
    key = aws("aws/AKIAZ3MEXAMPLE7PACS", "AKIAZ3MEXAMPLE7PACS1")
    lab = pacs_run(rec, PACS_ARCHIVER, key)
    scenario("27-legacy-credentials",
             "pacs-archiver (no credential kinds in its contract) uploads with a long-term AWS key (AKIA…) and fetches "
             "lab PDFs with Basic auth: NHI-052 for each; access key id and user name are metadata and may appear, "
             "the secret key and password never",
             rec, [f("NHI-052", PACS_ARCHIVER, credential={"kind": "aws_sigv4", "fingerprint": key["fingerprint"]}),
                   f("NHI-052", PACS_ARCHIVER, credential={"kind": "basic", "fingerprint": lab["fingerprint"]})],
             rules=pacs_contracts(listed=False), never=[AWS_SECRET, LAB_PASSWORD])
    rec = Recording()
    pacs_run(rec, PACS_ARCHIVER, key)
    pacs_run(rec, IMAGING_SYNC, aws("aws/ASIAZ3MEXAMPLE9SYNC", "ASIAZ3MEXAMPLE9SYNC1"), lab=False, pid=6200)
    scenario("28-legacy-credentials-declared",
             "the same uploads and lab fetches under a contract that lists basic and aws-sigv4, and a second job with "
             "temporary AWS credentials (ASIA…): no finding",
             rec, [], rules=pacs_contracts(listed=True) + IMAGING_SYNC_CONTRACT, never=[AWS_SECRET, LAB_PASSWORD])


def s29_s32_tokens():
    rec = Recording()
    t = T("2026-11-29T10:00:00")
    long_jwt = sa_jwt(MED, t - timedelta(hours=2), ttl=86400)
    med_some(rec, t, 3, long_jwt)
    scenario("29-token-ttl-too-long",
             "med-summarizer's token was issued for 24h; its contract allows at most 1h: NHI-053",
             rec, [f("NHI-053", MED, credential={"kind": "jwt", "fingerprint": long_jwt["fingerprint"],
                                                  "ttl_seconds": 86400})],
             never=[JWT_TEXT])

    rec = Recording()
    old = sa_jwt(MED, T("2026-11-29T08:58:00"))  # exp 09:58
    new = sa_jwt(MED, T("2026-11-29T09:50:00"))
    med_some(rec, T("2026-11-29T10:00:00"), 2, new)
    for i in range(3):
        rec.call(T("2026-11-29T10:06:00") + timedelta(seconds=5 * i), MED, 4242, "/app/summarizer", FHIR, "GET",
                 "/R4/MedicationRequest", status=401, req=412, resp=180, creds=[old])
    scenario("30-expired-token",
             "a cached token that expired at 09:58 is presented at 10:06: NHI-054",
             rec, [f("NHI-054", MED, credential={"kind": "jwt", "fingerprint": old["fingerprint"]})],
             never=[JWT_TEXT])

    rec = Recording()
    tok = sa_jwt(MED, T("2026-11-29T09:55:00"))
    med_some(rec, T("2026-11-29T10:00:00"), 3, tok)
    for i in range(4):
        rec.call(T("2026-11-29T10:04:00") + timedelta(seconds=11 * i), DEBUG, 77, "/usr/bin/curl", FHIR, "GET",
                 "/R4/Patient", req=300, resp=9_000, creds=[tok])
    scenario("31-token-replayed",
             "med-summarizer's token, copied out of its pod, is presented from a debug pod of another service account: "
             "NHI-055 naming med-summarizer, and NHI-001 for the ungoverned debug pod",
             rec, [f("NHI-055", DEBUG, credential={"kind": "jwt", "fingerprint": tok["fingerprint"]},
                     identities=[MED["id"]]),
                   f("NHI-001", DEBUG)],
             never=[JWT_TEXT])

    rec = Recording()
    med_some(rec, T("2026-11-29T10:00:00"), 3, tok)
    rng = random.Random(32)
    tb = T("2026-11-29T10:01:30")
    for _ in range(3):
        tb = summarize(rec, tb, tok, MED_KEY, ident=MED_B, pid=4310, rng=rng)
    scenario("32-token-same-identity-two-pods",
             "two replicas of med-summarizer (one SPIFFE ID, two pods on two nodes) present the same token and key: "
             "no finding",
             rec, [], never=[JWT_TEXT])


def s33_break_glass():
    rec = Recording()
    t = T("2026-11-29T03:12:00")
    jwt = sa_jwt(BREAKGLASS, t - timedelta(minutes=1), ttl=1800)
    for i in range(4):
        rec.call(t + timedelta(seconds=30 * i), BREAKGLASS, 901, "/usr/bin/curl", BH_NOTES, "GET", "/api/v2/notes",
                 req=350, resp=14_000, creds=[jwt])
    scenario("33-break-glass",
             "the break-glass administrator reads psychotherapy notes during an incident, within its contract: NHI-060",
             rec, [f("NHI-060", BREAKGLASS)])


# --- credential hygiene: audiences, scopes, rotation age ---------------------------------------------

EHR_API_AUD = "api://ehr-prod"
K8S_API = "kubernetes.default.svc.cluster.local"


def aud_jwt(ident, iat, aud, scope=None, ttl=3600, seed=None):
    """A token from the hospital's identity provider for `ident`, with audiences and scopes."""
    seed = seed or f"idp/{ident['id']}@{epoch(iat)}/{aud}/{scope}"
    j = other_jwt(seed, "https://idp.clinic.example", f"client:{ident.get('service_account')}", iat, ttl)
    if aud is not None:
        j["jwt"]["aud"] = aud if isinstance(aud, list) else [aud]
    if scope is not None:
        j["jwt"]["scope"] = scope.split()
    return j


def with_aud(jwt, aud):
    j = json.loads(json.dumps(jwt))
    j["jwt"]["aud"] = aud if isinstance(aud, list) else [aud]
    return j


def declare_audience(names, aud):
    """The shipped data sources, those named declaring `audiences: [aud]`."""
    docs = SHIPPED_DATA_SOURCES.split("\n---\n")
    for i, d in enumerate(docs):
        if any(f"  name: {n}\n" in d for n in names):
            docs[i] = d.replace("\nspec:\n", f"\nspec:\n  audiences: [{json.dumps(aud)}]\n", 1)
    return "\n---\n".join(docs)


def med_hygiene_contract(scopes=None, require_audience=False, max_key_age=None):
    allow = """    dataSources: [ehr-medications, ehr-patients, llm-anthropic, k8s-sa-token]
    combinations:
      - [ehr-medications, llm-anthropic]
      - [ehr-medications, ehr-patients, llm-anthropic]
    endpoints:
      - {dataSource: ehr-medications, methods: [GET]}
      - {dataSource: ehr-patients, methods: [GET]}
      - {dataSource: llm-anthropic, methods: [POST]}
    destinations: [{host: "*.svc.cluster.local"}, {host: kubernetes.default.svc}, {host: fhir.ehr.example.org}, {host: api.anthropic.com}]
"""
    if scopes:
        allow += "    scopes:\n" + "".join(
            f"      - {{dataSource: {d}, scopes: [{', '.join(json.dumps(x) for x in v)}]}}\n" for d, v in scopes)
    creds = "kinds: [jwt, api-key], maxTokenTtl: 1h, shared: forbidden"
    if require_audience:
        creds += ", requireAudience: true"
    if max_key_age:
        creds += f", maxKeyAge: {max_key_age}"
    return contract(
        "med-summarizer", "  identity: spiffe://clinic.example/ns/clinical-ai/sa/med-summarizer\n",
        "clinical-ai@example.org", "Summarise medication lists for clinicians", "2027-03-31", allow,
        "{" + creds + "}")


def med_hours(rec, start, hours, token_for, n=3, seed=35, key=MED_KEY):
    """`n` summaries an hour for `hours` hours, each hour with the token `token_for(iat)` gives."""
    rng = random.Random(seed)
    for h in range(hours):
        t0 = start + timedelta(hours=h)
        jwt = token_for(t0 - timedelta(minutes=2))
        t = t0
        for _ in range(n):
            t = summarize(rec, t, jwt, key, rng=rng)
            t += timedelta(seconds=30)


def s35_s41_audience():
    start = T("2026-12-01T08:00:00")
    # 35: a token minted for the billing API, presented to the FHIR server.
    rec = Recording()
    billing = aud_jwt(MED, start - timedelta(minutes=1), "https://billing.ehr.example.org/api")
    med_hours(rec, start, 1, lambda iat: billing)
    scenario("35-audience-mismatch",
             "med-summarizer presents a token minted for the billing API (aud https://billing.ehr.example.org/api) "
             "to the FHIR server: the confused-deputy / stolen-token signal, NHI-056 once for that destination "
             "and audience, naming the contract's owner and purpose",
             rec, [f("NHI-056", MED, count=6, destination=FHIR, audiences=["https://billing.ehr.example.org/api"],
                     credential={"kind": "jwt", "fingerprint": billing["fingerprint"]})],
             never=[JWT_TEXT])
    # 36-38: benign twins — by URL, by host, through the data source's declared audiences.
    for name, aud, what, ds in [
        ("36-audience-by-url", "https://fhir.ehr.example.org/R4", "a URL whose host and path prefix name the "
         "FHIR base", None),
        ("37-audience-by-host", "fhir.ehr.example.org", "the FHIR server's host name", None),
        ("38-audience-declared", EHR_API_AUD, "the opaque id the EHR's data sources declare under audiences:",
         declare_audience(["ehr-medications", "ehr-patients"], EHR_API_AUD)),
    ]:
        rec = Recording()
        med_hours(rec, start, 3, lambda iat, aud=aud: aud_jwt(MED, iat, aud))
        scenario(name, f"med-summarizer's hourly tokens name {what}: no finding",
                 rec, [], rules=med_hygiene_contract(), data_sources=ds, never=[JWT_TEXT])
    # 39: the contract asks for audience-bound tokens; the tokens name none.
    rec = Recording()
    med_hours(rec, start, 2, lambda iat: sa_jwt(MED, iat))
    scenario("39-audience-missing",
             "med-summarizer's contract says requireAudience: true, and its tokens carry no aud: NHI-057 once "
             "per issuer and dedup window (the hourly rotation does not make it a new finding)",
             rec, [f("NHI-057", MED, count=6, destination=FHIR), f("NHI-057", MED, count=6, destination=FHIR)],
             rules=med_hygiene_contract(require_audience=True), never=[JWT_TEXT])
    # 40: Kubernetes service-account tokens to the API server: the common benign case.
    rec = Recording()
    for i in range(6):
        t = start + timedelta(minutes=10 * i)
        tok = with_aud(sa_jwt(MED, t - timedelta(minutes=3)), "https://kubernetes.default.svc.cluster.local")
        rec.call(t, MED, 4242, "/app/summarizer", K8S_API, "GET", "/api/v1/namespaces/{id}/configmaps/{id}",
                 req=300, resp=1_200, creds=[tok])
        rec.call(t + timedelta(seconds=1), MED, 4242, "/app/summarizer", "kubernetes.default.svc", "GET",
                 "/apis/coordination.k8s.io/v1/namespaces/{id}/leases/{id}", req=300, resp=600, creds=[tok])
    scenario("40-kubernetes-token-to-api-server",
             "med-summarizer's projected service-account token (aud https://kubernetes.default.svc.cluster.local) "
             "goes to the API server by its Service names: no finding",
             rec, [],
             rules=med_hygiene_contract(), never=[JWT_TEXT])
    # 41: the same token, taken to the FHIR server.
    rec = Recording()
    tok = with_aud(sa_jwt(MED, start - timedelta(minutes=3)), "https://kubernetes.default.svc.cluster.local")
    med_hours(rec, start, 1, lambda iat: tok)
    scenario("41-kubernetes-token-to-fhir",
             "the API-server token is presented to the FHIR server instead: NHI-056",
             rec, [f("NHI-056", MED, count=6, destination=FHIR,
                     audiences=["https://kubernetes.default.svc.cluster.local"])],
             rules=med_hygiene_contract(), never=[JWT_TEXT])


def s42_s43_scopes():
    start = T("2026-12-02T08:00:00")
    grant = [("ehr-medications", ["patient/MedicationRequest.read", "patient/MedicationStatement.read"]),
             ("ehr-patients", ["patient/Patient.read"]), ("llm-anthropic", ["messages:write"])]
    rec = Recording()
    med_hours(rec, start, 1, lambda iat: aud_jwt(MED, iat, "https://fhir.ehr.example.org/R4",
                                                 "patient/MedicationRequest.read patient/Patient.read system/*.* "
                                                 "patient/Observation.write"), n=3)
    scenario("42-scope-beyond-contract",
             "med-summarizer's SMART tokens ask for system/*.* and patient/Observation.write besides the reads its "
             "contract lists: NHI-058 once per scope, however many tokens carry it",
             rec, [f("NHI-058", MED, count=6, scope="system/*.*", destination=FHIR,
                     allowed=["patient/MedicationRequest.read", "patient/MedicationStatement.read",
                              "patient/Patient.read"]),
                   f("NHI-058", MED, count=6, scope="patient/Observation.write", destination=FHIR)],
             rules=med_hygiene_contract(scopes=grant), never=[JWT_TEXT])
    rec = Recording()
    med_hours(rec, start, 2, lambda iat: aud_jwt(MED, iat, "https://fhir.ehr.example.org/R4",
                                                 "patient/MedicationRequest.read patient/Patient.read"))
    scenario("43-scopes-inside-contract",
             "the same workload with tokens that carry only the scopes its contract lists (one token serves two "
             "data sources of the FHIR server, whose grants count together): no finding",
             rec, [], rules=med_hygiene_contract(scopes=grant), never=[JWT_TEXT])


def s44_s46_rotation():
    first = T("2026-08-03T09:00:00")
    late = T("2026-11-22T09:00:00")  # 111 days later
    rec = Recording()
    med_hours(rec, first, 1, lambda iat: sa_jwt(MED, iat), n=2)
    med_hours(rec, late, 1, lambda iat: sa_jwt(MED, iat), n=2)
    scenario("44-rotation-overdue",
             "med-summarizer still sends the Anthropic API key nhiwatch first saw 111 days earlier: NHI-059 with first "
             "seen, days in use and that the age is a lower bound (its hourly service-account tokens expire: "
             "not judged)",
             rec, [f("NHI-059", MED, count=2, first_seen="2026-08-03T09:00:00.000000000Z", days_in_use=111,
                     age_is_lower_bound=True, limit=90,
                     credential={"kind": "api_key", "fingerprint": MED_KEY["fingerprint"]})],
             never=[MED_KEY_SECRET])
    rec = Recording()
    med_hours(rec, T("2026-09-25T09:00:00"), 1, lambda iat: sa_jwt(MED, iat), n=2)
    med_hours(rec, late, 1, lambda iat: sa_jwt(MED, iat), n=2)
    scenario("45-key-within-rotation-age",
             "the same key first seen 58 days earlier, inside the 90-day default: no finding",
             rec, [], never=[MED_KEY_SECRET])
    rec = Recording()
    med_hours(rec, T("2026-09-25T09:00:00"), 1, lambda iat: sa_jwt(MED, iat), n=2)
    med_hours(rec, late, 1, lambda iat: sa_jwt(MED, iat), n=2)
    scenario("46-rotation-contract-max-key-age",
             "58 days, but the contract says maxKeyAge: 30d: NHI-059 against the contract's limit",
             rec, [f("NHI-059", MED, count=2, days_in_use=58, limit=30)],
             rules=med_hygiene_contract(max_key_age="30d"), never=[MED_KEY_SECRET])


def build():
    s01_benign_med_summarizer_day()
    s02_ungoverned()
    s03_s04_expiry()
    s05_s06_owner()
    s07_undeclared_data_source()
    s08_undeclared_method()
    s09_s10_destination()
    s11_secret_by_shell()
    s12_secret_without_grant()
    s13_fitness_benign()
    s14_combination_not_allowed()
    s15_s16_combination_unseen()
    s17_s18_volume()
    s19_s20_limits()
    s21_s23_shared()
    s24_s26_claims_credentials()
    s27_s28_legacy()
    s29_s32_tokens()
    s33_break_glass()
    s34_ungoverned_significant()
    s35_s41_audience()
    s42_s43_scopes()
    s44_s46_rotation()


def main():
    check = "--check" in sys.argv[1:]
    build()
    names = [s[0] for s in SCENARIOS]
    assert len(set(names)) == len(names), "duplicate scenario names"
    stale = []
    for sc in SCENARIOS:
        d = HERE / sc[0]
        files = files_of(sc)
        for rel, text in files.items():
            if sc[6]:
                for secret in sc[6]:
                    assert secret not in text or rel == "expected.yaml", f"{sc[0]}/{rel} holds a never string"
            p = d / rel
            if check:
                if not p.exists() or p.read_text() != text:
                    stale.append(str(p.relative_to(REPO)))
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text)
        present = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} if d.exists() else set()
        for extra in sorted(present - set(files)):
            if check:
                stale.append(f"{sc[0]}/{extra} (not generated)")
            else:
                (d / extra).unlink()
        if not check and (d / "rules").exists() and not any((d / "rules").iterdir()):
            shutil.rmtree(d / "rules")
    dirs = {p.name for p in HERE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    for extra in sorted(dirs - set(names)):
        stale.append(f"{extra}/ (no such scenario in generate.py)")
    if stale:
        print("out of date:\n  " + "\n  ".join(stale))
        sys.exit(1 if check else 0)
    if not check:
        total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
        print(f"{len(SCENARIOS)} scenarios, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
