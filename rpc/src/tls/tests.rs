use super::*;

#[test]
fn go_cipher_suite_names_map_and_unknown_ones_are_refused() {
    let p = crypto(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_string()]).unwrap();
    // TLS 1.3's suites stay; one TLS 1.2 suite is left.
    assert_eq!(p.cipher_suites.iter().filter(|s| s.tls13().is_none()).count(), 1);
    let e = crypto(&["TLS_RSA_WITH_RC4_128_SHA".to_string()]).unwrap_err();
    assert_eq!(e.to_string(), "unexpected TLS cipher suite \"TLS_RSA_WITH_RC4_128_SHA\"");
}

#[test]
fn url_hosts_for_a_generated_certificate() {
    let hosts =
        url_hosts(["https://127.0.0.1:2379", "https://localhost:2380/", "https://0.0.0.0:1", "http://127.0.0.1:9"].into_iter());
    assert_eq!(hosts, vec!["127.0.0.1", "localhost"]);
}

#[test]
fn half_given_flags_are_refused() {
    let f = TlsFiles { cert_file: Some("c.pem".into()), ..Default::default() };
    assert!(f.validate("client").is_err());
    let f = TlsFiles { client_cert_auth: true, cert_file: Some("c".into()), key_file: Some("k".into()), ..Default::default() };
    assert!(f.validate("client").is_err());
    // An allowed name with nothing to check it against, or both kinds.
    let served = TlsFiles { cert_file: Some("c".into()), key_file: Some("k".into()), ..Default::default() };
    let f = TlsFiles { allowed_cn: Some("a".into()), ..served.clone() };
    assert!(f.validate("peer").unwrap_err().to_string().contains("needs client certificate authentication"));
    let f = TlsFiles {
        allowed_cn: Some("a".into()),
        allowed_hostname: Some("a".into()),
        client_cert_auth: true,
        trusted_ca_file: Some("ca".into()),
        ..served.clone()
    };
    assert!(f.validate("peer").unwrap_err().to_string().contains("mutually exclusive"));
}

/// Serves `tls` on a local port: each accepted connection writes one byte;
/// each handshake's outcome goes to the receiver.
async fn serve_one_byte(tls: Arc<ServerTls>) -> (String, tokio::sync::mpsc::UnboundedReceiver<Result<ClientIdentity, String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tls, seen_tx) = (tls.clone(), seen_tx.clone());
            tokio::spawn(async move {
                let r = tls.accept(tcp).await.map(|(mut s, id)| {
                    tokio::spawn(async move {
                        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"x").await;
                    });
                    id
                });
                let _ = seen_tx.send(r.map_err(|e| handshake_error(&e)));
            });
        }
    });
    (url, seen)
}

/// Reads the one byte `url` serves, as `who` (a certificate of `ca`).
async fn read_one_as(ca: &DevCa, who: &CertFiles, url: &str) -> std::io::Result<()> {
    let files = ClientFiles {
        ca_file: Some(ca.ca_file.clone()),
        cert_file: Some(who.cert_file.clone()),
        key_file: Some(who.key_file.clone()),
        insecure_skip_verify: false,
    };
    let (mut io, _) = Dialer::new(&files, &[]).unwrap().http1(url).await?;
    let mut b = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut io, &mut b).await?;
    Ok(())
}

/// etcd's --peer-cert-allowed-cn and --peer-cert-allowed-hostname: of the
/// certificates the CA signed, only the allowed one connects; the refused
/// caller reads what etcd's would ("remote error: tls: bad certificate").
#[tokio::test]
async fn only_the_allowed_common_name_or_host_name_connects() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(&dir.path().join("ca")).unwrap();
    let server = ca.issue("server", &["127.0.0.1".into()]).unwrap();
    let alice = ca.issue("alice", &["alice.example".into()]).unwrap();
    let bob = ca.issue("bob", &["bob.example".into()]).unwrap();
    let requiring = |allowed_cn: Option<&str>, allowed_hostname: Option<&str>| TlsFiles {
        cert_file: Some(server.cert_file.clone()),
        key_file: Some(server.key_file.clone()),
        trusted_ca_file: Some(ca.ca_file.clone()),
        client_cert_auth: true,
        allowed_cn: allowed_cn.map(Into::into),
        allowed_hostname: allowed_hostname.map(Into::into),
        ..Default::default()
    };
    for files in [requiring(Some("alice"), None), requiring(None, Some("alice.example"))] {
        let tls = ServerTls::new(&files, &[], dir.path(), &[]).unwrap().unwrap();
        let (url, mut seen) = serve_one_byte(tls).await;
        read_one_as(&ca, &alice, &url).await.unwrap();
        assert_eq!(seen.recv().await.unwrap().unwrap().common_name.as_deref(), Some("alice"));
        let refused = read_one_as(&ca, &bob, &url).await.unwrap_err();
        assert_eq!(handshake_error(&refused), "remote error: tls: bad certificate", "{files:?}");
        let why = seen.recv().await.unwrap().unwrap_err();
        assert!(why.contains("not valid for name") && why.contains("bob"), "{why}");
    }
}

/// A server with client-cert-auth, a client with and without a certificate
/// from its CA, over real sockets; then the server's files are replaced by a
/// certificate from another CA and new connections see it without a restart.
#[tokio::test]
async fn handshakes_identity_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(&dir.path().join("ca")).unwrap();
    let server = ca.issue("server", &["127.0.0.1".into(), "localhost".into()]).unwrap();
    let alice = ca.issue("alice", &[]).unwrap();
    let (cert, key) = (dir.path().join("s.pem"), dir.path().join("s-key.pem"));
    std::fs::copy(&server.cert_file, &cert).unwrap();
    std::fs::copy(&server.key_file, &key).unwrap();
    let files = TlsFiles {
        cert_file: Some(cert.clone()),
        key_file: Some(key.clone()),
        trusted_ca_file: Some(ca.ca_file.clone()),
        client_cert_auth: true,
        ..Default::default()
    };
    let tls = ServerTls::new(&files, &[], dir.path(), &[]).unwrap().unwrap();
    let (url, mut seen) = serve_one_byte(tls).await;
    let with_cert = Dialer::new(
        &ClientFiles {
            ca_file: Some(ca.ca_file.clone()),
            cert_file: Some(alice.cert_file.clone()),
            key_file: Some(alice.key_file.clone()),
            insecure_skip_verify: false,
        },
        &[],
    )
    .unwrap();
    let read_one = |d: Dialer| {
        let url = url.clone();
        async move {
            let (mut io, _) = d.http1(&url).await?;
            let mut b = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut io, &mut b).await?;
            std::io::Result::Ok(())
        }
    };
    read_one(with_cert.clone()).await.unwrap();
    assert_eq!(seen.recv().await.unwrap().unwrap().common_name.as_deref(), Some("alice"));

    // No client certificate: the server refuses the handshake.
    let no_cert = Dialer::new(&ClientFiles { ca_file: Some(ca.ca_file.clone()), ..Default::default() }, &[]).unwrap();
    assert!(read_one(no_cert).await.is_err());
    assert!(seen.recv().await.unwrap().is_err());

    // A trusted CA's own self-signed certificate as a client's (etcd's e2e
    // fixture CommonName-root.crt is one): Go accepts it, and so does this
    // server; another CA's self-signed one is refused.
    read_one(Dialer::new(&presenting(&ca, &ca.ca_file), &[]).unwrap()).await.unwrap();
    assert_eq!(seen.recv().await.unwrap().unwrap().common_name.as_deref(), Some("tessera dev CA"));
    let stranger = DevCa::create(&dir.path().join("stranger")).unwrap();
    assert!(read_one(Dialer::new(&presenting(&stranger, &ca.ca_file), &[]).unwrap()).await.is_err());
    assert!(seen.recv().await.unwrap().is_err());

    // Rotated to a certificate of another CA: clients trusting only the first now fail,
    // clients trusting the new one succeed, without restarting the server.
    let ca2 = DevCa::create(&dir.path().join("ca2")).unwrap();
    let server2 = ca2.issue("server", &["127.0.0.1".into()]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::copy(&server2.cert_file, &cert).unwrap();
    std::fs::copy(&server2.key_file, &key).unwrap();
    assert!(read_one(with_cert).await.is_err());
    let _ = seen.recv().await;
    let trusts_new = Dialer::new(
        &ClientFiles {
            ca_file: Some(ca2.ca_file.clone()),
            cert_file: Some(alice.cert_file.clone()),
            key_file: Some(alice.key_file.clone()),
            insecure_skip_verify: false,
        },
        &[],
    )
    .unwrap();
    read_one(trusts_new).await.unwrap();
    assert_eq!(seen.recv().await.unwrap().unwrap().common_name.as_deref(), Some("alice"));

    // Skipping verification accepts any server certificate.
    let insecure = Dialer::new(
        &ClientFiles {
            cert_file: Some(alice.cert_file.clone()),
            key_file: Some(alice.key_file.clone()),
            insecure_skip_verify: true,
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    read_one(insecure).await.unwrap();
}

/// A client's files presenting `ca`'s own certificate, trusting `trusted`.
fn presenting(ca: &DevCa, trusted: &std::path::Path) -> ClientFiles {
    let key = ca.ca_file.with_file_name("ca-key.pem");
    std::fs::write(&key, ca.key.serialize_pem()).unwrap();
    ClientFiles {
        ca_file: Some(trusted.to_path_buf()),
        cert_file: Some(ca.ca_file.clone()),
        key_file: Some(key),
        ..Default::default()
    }
}

/// etcd reads a revocation list as PEM or DER (its e2e fixture is DER): both
/// give the same list, and anything else is a parse error naming the file.
#[test]
fn revocation_lists_are_read_as_pem_or_der() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(&dir.path().join("ca")).unwrap();
    let alice = ca.issue("alice", &[]).unwrap();
    let pem = ca.revoke(&[&alice]).unwrap();
    let from_pem = crls(&pem).unwrap();
    assert_eq!(from_pem.len(), 1);
    let der = dir.path().join("revoke.crl");
    std::fs::write(&der, from_pem[0].as_ref()).unwrap();
    assert_eq!(crls(&der).unwrap(), from_pem);
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n").unwrap();
    assert!(matches!(crls(&bad), Err(TlsError::Parse { .. })));
}
