//! End-to-end: destinations are named by the TLS server name a client asked for, and by the DNS
//! answers its process received (a real resolver path: glibc → UDP/53 → a DNS server in a netns).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use nhiwatch_e2e::*;

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn an_api_call_without_host_is_named_by_its_tls_server_name() {
    let nginx = Nginx::start("location /fhir/R4/ { return 200 'ok'; }");
    let d = Daemon::start(&config_with(&[], ""));
    // HTTP/1.0 without Host: only the handshake names the server.
    let pid = converse(
        Command::new("openssl").args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-servername",
            "sni.nhiwatch.test",
            "-connect",
            &format!("127.0.0.1:{}", nginx.port),
        ]),
        "GET /fhir/R4/Patient/4411 HTTP/1.0\r\n\r\n",
    );
    let sni = d.wait_for("the client's server name", WAIT, |v| {
        kind_is(v, "tls_sni") && pid_is(v, pid)
    });
    assert_eq!(sni["server_name"], "sni.nhiwatch.test", "{sni}");
    let call = d.wait_for("the call", WAIT, |v| {
        kind_is(v, "api_call") && pid_is(v, pid)
    });
    assert_eq!(call["path"], "/fhir/R4/Patient/{id}", "{call}");
    assert!(call.get("authority").is_none(), "{call}");
    assert_eq!(call["destination"]["name"], "sni.nhiwatch.test", "{call}");
    assert_eq!(call["destination"]["source"], "sni", "{call}");
    assert_eq!(
        call["destination"]["address"],
        format!("127.0.0.1:{}", nginx.port),
        "{call}"
    );
    d.stop();
}

/// A network namespace whose /etc/resolv.conf points at a DNS server inside it
/// (`ip netns exec` bind-mounts /etc/netns/NAME/* over /etc). Removed on drop.
struct DnsNamespace {
    name: String,
    server: Child,
}

/// Answers `db.nhiwatch.test` with a CNAME to `pg-primary.nhiwatch.test` and its A
/// record 127.0.0.1 (TTL 120); AAAA queries get an empty NOERROR; anything else NXDOMAIN.
const DNS_SERVER: &str = r#"
import socket, struct, sys
def name(n): return b"".join(bytes([len(l)]) + l.encode() for l in n.split(".") if l) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(1500); qid = struct.unpack(">H", q[:2])[0]; i = 12; labels = []
    while q[i]: labels.append(q[i+1:i+1+q[i]].decode()); i += 1 + q[i]
    qname = ".".join(labels).lower(); qtype = struct.unpack(">H", q[i+1:i+3])[0]; question = q[12:i+5]; ans = []
    rcode = 3
    if qname == "db.nhiwatch.test":
        rcode = 0
        if qtype == 1:
            target = name("pg-primary.nhiwatch.test")
            ans.append(b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 300, len(target)) + target)
            ans.append(struct.pack(">HHHIH", 0xc000 | (12 + len(question) + 12), 1, 1, 120, 4) + bytes([127, 0, 0, 1]))
    s.sendto(struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(ans), 0, 0) + question + b"".join(ans), peer)
"#;

impl DnsNamespace {
    fn start() -> DnsNamespace {
        // Names of network namespaces and /etc/netns entries are shared by the machine.
        let name = format!("nwdns{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        let etc = format!("/etc/netns/{name}");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(format!("{etc}/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        let mut server = Command::new("ip")
            .args(["netns", "exec", &name, "python3", "-u", "-c", DNS_SERVER])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "DNS server in {name} did not start");
        DnsNamespace { name, server }
    }
}

impl Drop for DnsNamespace {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

#[test]
fn a_flow_is_named_by_the_dns_answer_its_process_received() {
    let ns = DnsNamespace::start();
    let d = Daemon::start(&config_with(&[], ""));
    // One process: a listener, then a lookup through glibc and a connection to the answer.
    let script = "import socket\n\
        srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n\
        port = srv.getsockname()[1]\n\
        addr = socket.getaddrinfo('db.nhiwatch.test', port, socket.AF_INET, socket.SOCK_STREAM)[0][4]\n\
        assert addr[0] == '127.0.0.1', addr\n\
        c = socket.create_connection(addr); c.sendall(b'hello'); c.close()\n";
    let pid =
        spawn_pid(Command::new("ip").args(["netns", "exec", &ns.name, "python3", "-c", script]));
    // `ip netns exec` execs python3 in the same process.
    let answer = d.wait_for("the DNS answer", WAIT, |v| {
        kind_is(v, "dns_answer") && v["query"] == "db.nhiwatch.test"
    });
    assert_eq!(
        answer["addresses"],
        serde_json::json!(["127.0.0.1"]),
        "{answer}"
    );
    assert_eq!(
        answer["ttl"], 120,
        "the CNAME chain's smallest TTL: {answer}"
    );
    let conn = d.wait_for("the named connect", WAIT, |v| {
        kind_is(v, "tcp_connect") && pid_is(v, pid)
    });
    assert_eq!(conn["dst_name"], "db.nhiwatch.test", "{conn}");
    assert_eq!(
        answer["cgroup_id"], conn["cgroup_id"],
        "answer seen for the process's cgroup"
    );
    d.stop();
}
