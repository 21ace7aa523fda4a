//! `NatsArgs` against real nats-server processes this test starts: server
//! lists, credentials in the URL, NKEY, `.creds` files, TLS with a client
//! certificate, and the stream settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use proto_events::nats::{FirstConnect, NatsArgs, NatsError};
use proto_events::{Namespace, StreamSettings};
use serde_json::{Value, json};

/// A nats-server on a port of its own choosing, with its config and data
/// in a temporary directory; killed and removed on drop.
struct NatsServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl NatsServer {
    /// Starts a server with `extra` appended to a config that listens on a
    /// free loopback port and logs to a file.
    fn start(extra: &str) -> Self {
        Self::start_with(|_| extra.to_owned())
    }

    /// Like [`NatsServer::start`], with config lines made from the
    /// server's directory (which may hold files they name).
    fn start_with(extra: impl FnOnce(&Path) -> String) -> Self {
        let dir = temp_dir();
        let log = dir.join("server.log");
        let config = format!(
            "listen: \"127.0.0.1:-1\"\nlog_file: \"{}\"\n{}\n",
            log.display(),
            extra(&dir)
        );
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, config).unwrap();
        let bin = if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed");
        let mut server = Self {
            child,
            dir,
            port: 0,
        };
        server.port = server.wait_for_port(&log);
        server
    }

    /// The client port, from the server's "Listening for client
    /// connections" log line, once it says it is ready.
    fn wait_for_port(&mut self, log: &Path) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("Server is ready") {
                let line = text
                    .lines()
                    .find(|l| l.contains("Listening for client connections on"))
                    .expect("client listener line");
                return line.rsplit(':').next().unwrap().trim().parse().unwrap();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nats-server exited with {status}: {text}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nats-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nobody listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_file(path: &Path, content: &str) -> PathBuf {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(content.as_bytes()).unwrap();
    path.to_owned()
}

/// Connects without retrying, with a short timeout so failures are quick.
async fn try_connect(args: &NatsArgs) -> Result<async_nats::Client, NatsError> {
    tokio::time::timeout(
        Duration::from_secs(20),
        args.connect("proto-events-test", FirstConnect::FailFast),
    )
    .await
    .expect("connect finished in time")
}

/// A message goes through the connection and comes back.
async fn round_trip(client: &async_nats::Client) {
    let subject = format!("t.{}", uuid::Uuid::new_v4().simple());
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.publish(subject, "ping".into()).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("message in time")
        .expect("subscription open");
    assert_eq!(&msg.payload[..], b"ping");
}

#[tokio::test]
async fn a_server_list_connects_through_a_live_server_when_the_first_is_down() {
    let server = NatsServer::start("");
    let args = NatsArgs::for_url(&format!(
        "nats://127.0.0.1:{}, nats://{}",
        dead_port(),
        server.addr()
    ));
    // The client tries the servers in random order: several connections
    // make it all but certain the dead one was tried first at least once.
    for _ in 0..4 {
        let client = try_connect(&args).await.unwrap();
        assert_eq!(client.server_info().port, server.port);
        round_trip(&client).await;
    }
    // A service's connection (retried in the background) gets there too.
    let client = args
        .connect("proto-events-test", FirstConnect::RetryInBackground)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), round_trip(&client))
        .await
        .expect("the service connection reached the live server");
    // Only dead servers: a command fails and says where it tried, redacted.
    let dead = NatsArgs::for_url(&format!("nats://tok3n@127.0.0.1:{}", dead_port()));
    let e = try_connect(&dead).await.unwrap_err().to_string();
    assert!(
        e.contains("cannot connect to NATS at nats://***@127.0.0.1"),
        "{e}"
    );
    assert!(!e.contains("tok3n"), "{e}");
}

#[tokio::test]
async fn user_password_and_token_in_the_url_authenticate() {
    let users = NatsServer::start(
        "authorization { users = [ { user: \"alice\", password: \"pa55:w@rd\" } ] }",
    );
    let ok = NatsArgs::for_url(&format!("nats://alice:pa55%3Aw%40rd@{}", users.addr()));
    round_trip(&try_connect(&ok).await.unwrap()).await;
    for url in [
        format!("nats://{}", users.addr()),
        format!("nats://alice:Wr0ngSecret@{}", users.addr()),
    ] {
        let e = try_connect(&NatsArgs::for_url(&url)).await.unwrap_err();
        assert!(!e.to_string().contains("Wr0ngSecret"), "{e}");
    }

    let tokens = NatsServer::start("authorization { token: \"T0kenValue\" }");
    let ok = NatsArgs::for_url(&format!(
        "nats://127.0.0.1:{},nats://T0kenValue@{}",
        dead_port(),
        tokens.addr()
    ));
    round_trip(&try_connect(&ok).await.unwrap()).await;
    assert!(!format!("{ok:?}").contains("T0kenValue"));
    assert!(
        try_connect(&NatsArgs::for_url(&format!(
            "nats://Other@{}",
            tokens.addr()
        )))
        .await
        .is_err()
    );
}

#[tokio::test]
async fn an_nkey_seed_file_authenticates() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    ));
    let seed = user.seed().unwrap();
    let mut args = NatsArgs::for_url(&format!("nats://{}", server.addr()));
    args.nats_nkey = Some(write_file(&server.path("user.nk"), &format!("{seed}\n")));
    round_trip(&try_connect(&args).await.unwrap()).await;
    assert!(!format!("{args:?}").contains(&seed));

    // Another user's seed is refused by the server.
    args.nats_nkey = Some(write_file(
        &server.path("other.nk"),
        &nkeys::KeyPair::new_user().seed().unwrap(),
    ));
    assert!(try_connect(&args).await.is_err());
    // A damaged seed stops the start, and the error does not repeat it.
    // (Another letter at position 10, never the one already there.)
    let other = if &seed[10..11] == "A" { "B" } else { "A" };
    let damaged = format!("{}{other}{}", &seed[..10], &seed[11..]);
    args.nats_nkey = Some(write_file(&server.path("bad.nk"), &damaged));
    let e = try_connect(&args).await.unwrap_err().to_string();
    assert!(e.contains("NATS_NKEY") && !e.contains(&damaged[2..]), "{e}");
    // Without it the server refuses the connection.
    args.nats_nkey = None;
    assert!(try_connect(&args).await.is_err());
}

/// A NATS JWT (`ed25519-nkey`) with the given claims, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, nats: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": "test",
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[tokio::test]
async fn a_creds_file_authenticates_against_an_operator_mode_server() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        json!({"type": "account", "version": 2, "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1,
            "exports": -1, "wildcards": true, "conn": -1, "leaf": -1}}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        json!({"type": "user", "version": 2, "pub": {}, "sub": {},
               "subs": -1, "data": -1, "payload": -1}),
    );
    let server = NatsServer::start_with(|dir| {
        let operator_file = write_file(&dir.join("operator.jwt"), &operator_jwt);
        format!(
            "operator: \"{}\"\nresolver: MEMORY\nresolver_preload: {{ {}: \"{account_jwt}\" }}",
            operator_file.display(),
            account.public_key()
        )
    });
    let seed = user.seed().unwrap();
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    let mut args = NatsArgs::for_url(&format!("nats://{}", server.addr()));
    args.nats_creds = Some(write_file(&server.path("user.creds"), &creds));
    round_trip(&try_connect(&args).await.unwrap()).await;
    assert!(!format!("{args:?}").contains(&seed));

    args.nats_creds = None;
    assert!(
        try_connect(&args).await.is_err(),
        "the server requires credentials"
    );
    args.nats_creds = Some(server.path("missing.creds"));
    let e = try_connect(&args).await.unwrap_err().to_string();
    assert!(e.contains("NATS_CREDS"), "{e}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate,
/// written as PEM files into `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bedolaga test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            write_file(&dir.join(format!("{name}.pem")), &cert.pem()),
            write_file(&dir.join(format!("{name}-key.pem")), &key.serialize_pem()),
        )
    };
    let (server_cert, server_key) = leaf(
        "server",
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf("client", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: write_file(&dir.join("ca.pem"), &ca_cert.pem()),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

#[tokio::test]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    // The binaries install this provider at start (two are linked in).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut files = None;
    let server = NatsServer::start_with(|dir| {
        let pki = pki(dir);
        let tls = format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 5 }}",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        );
        files = Some(pki);
        tls
    });
    let pki = files.unwrap();
    let with_cert = |url: String| {
        let mut args = NatsArgs::for_url(&url);
        args.nats_tls_ca = Some(pki.ca.clone());
        args.nats_tls_cert = Some(pki.client_cert.clone());
        args.nats_tls_key = Some(pki.client_key.clone());
        args
    };
    round_trip(
        &try_connect(&with_cert(format!("tls://{}", server.addr())))
            .await
            .unwrap(),
    )
    .await;
    // A `nats://` URL is upgraded too (the server requires TLS).
    round_trip(
        &try_connect(&with_cert(format!("nats://{}", server.addr())))
            .await
            .unwrap(),
    )
    .await;
    // Without the client certificate the server refuses the client.
    let mut no_cert = with_cert(format!("tls://{}", server.addr()));
    no_cert.nats_tls_cert = None;
    no_cert.nats_tls_key = None;
    assert!(try_connect(&no_cert).await.is_err());
    // Without the private CA the server's certificate is not trusted.
    let mut no_ca = with_cert(format!("tls://{}", server.addr()));
    no_ca.nats_tls_ca = None;
    assert!(try_connect(&no_ca).await.is_err());
    // A TLS setting makes TLS required: a plain server is refused.
    let plain = NatsServer::start("");
    assert!(
        try_connect(&with_cert(format!("nats://{}", plain.addr())))
            .await
            .is_err()
    );
}

/// Log lines written while a guard is held (this thread only).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn streams_are_created_with_the_settings_and_an_existing_one_is_left_with_a_warning() {
    let server = NatsServer::start_with(|dir| {
        format!(
            "jetstream {{ store_dir: \"{}\" }}",
            dir.join("js").display()
        )
    });
    let client = try_connect(&NatsArgs::for_url(&format!("nats://{}", server.addr())))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);

    let mut args = NatsArgs::for_url(&format!("nats://{}", server.addr()));
    args.nats_prefix = "settings".into();
    args.events_max_age = Duration::from_secs(2 * 86_400);
    args.events_max_bytes = "64M".parse().unwrap();
    let ns = args.namespace().unwrap();
    let mut stream = ns.ensure_streams(&js).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.name, "EVENTS_settings");
    assert_eq!(config.max_age, Duration::from_secs(2 * 86_400));
    assert_eq!(config.max_bytes, 64 << 20);
    assert_eq!(config.num_replicas, 1);
    assert!(ns.stream_differences(&config).is_empty());
    let deadletters = js.get_stream("DEADLETTER_settings").await.unwrap();
    assert!(
        ns.stream_differences(&deadletters.cached_info().config)
            .is_empty()
    );

    // The defaults differ from that stream: it is left as it is, and each
    // difference is logged once.
    let defaults = Namespace::new("settings").unwrap();
    assert_eq!(*defaults.stream_settings(), StreamSettings::default());
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let mut existing = defaults.ensure_streams(&js).await.unwrap();
    defaults.clone().ensure_streams(&js).await.unwrap();
    drop(guard);
    let config = existing.info().await.unwrap().config.clone();
    assert_eq!(
        config.max_age,
        Duration::from_secs(2 * 86_400),
        "not updated"
    );
    let diffs = defaults.stream_differences(&config);
    let settings: Vec<_> = diffs.iter().map(|d| d.setting).collect();
    assert_eq!(settings, ["EVENTS_MAX_AGE", "EVENTS_MAX_BYTES"]);
    assert_eq!(
        (diffs[0].existing.as_str(), diffs[0].configured.as_str()),
        ("2days", "7days")
    );
    assert_eq!(
        (diffs[1].existing.as_str(), diffs[1].configured.as_str()),
        ("67108864", "unlimited")
    );
    let logs = captured.text();
    let warnings: Vec<_> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(
        warnings.len(),
        2,
        "one warning per difference, once: {logs}"
    );
    assert!(
        warnings[0].contains("EVENTS_MAX_AGE")
            && warnings[0].contains("existing=2days")
            && warnings[0].contains("configured=7days")
            && warnings[0].contains("EVENTS_settings"),
        "{logs}"
    );
    assert!(warnings[1].contains("EVENTS_MAX_BYTES"), "{logs}");

    // More replicas than a single server has: the stream cannot be created.
    args.nats_prefix = "replicas".into();
    args.events_replicas = 3;
    assert!(args.namespace().unwrap().ensure_streams(&js).await.is_err());
}

#[tokio::test]
async fn a_three_node_cluster_gets_replicated_streams_through_the_url_list() {
    let routes: Vec<u16> = (0..3).map(|_| dead_port()).collect();
    let servers: Vec<NatsServer> = (0..3)
        .map(|i| {
            NatsServer::start_with(|dir| {
                let others: Vec<String> = (0..3)
                    .filter(|j| *j != i)
                    .map(|j| format!("\"nats-route://127.0.0.1:{}\"", routes[j]))
                    .collect();
                format!(
                    "server_name: n{i}\njetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: c, listen: \"127.0.0.1:{}\", routes: [{}] }}",
                    dir.join("js").display(),
                    routes[i],
                    others.join(", ")
                )
            })
        })
        .collect();
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("nats://{}", s.addr()))
        .collect();
    let mut args = NatsArgs::for_url(&urls.join(","));
    args.nats_prefix = "cluster".into();
    args.events_replicas = 3;
    let client = try_connect(&args).await.unwrap();
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    let ns = args.namespace().unwrap();
    // JetStream answers once the cluster has elected its meta leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match ns.ensure_streams(&js).await {
            Ok(stream) => break stream,
            Err(e) if Instant::now() < deadline => {
                eprintln!("streams not created yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("streams not created: {e}"),
        }
    };
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    let cluster = info.cluster.as_ref().expect("cluster info");
    assert_eq!(cluster.replicas.len(), 2, "{cluster:?}");
    let deadletters = js.get_stream("DEADLETTER_cluster").await.unwrap();
    assert_eq!(deadletters.cached_info().config.num_replicas, 3);
}
