//! A small client for QEMU's machine protocol (QMP) on the run's unix
//! socket: the greeting and the `qmp_capabilities` handshake, commands with
//! JSON arguments, events kept as they arrive, and HMP commands (such as
//! `qemu-io`) through `human-monitor-command`.
//!
//! Every read has a deadline, so a QEMU that stops answering gives
//! [`QmpError::Timeout`] instead of a hung test. QEMU runs monitor commands
//! in its main loop: while a vCPU holds the big lock in a long MMIO write
//! (a controller reset draining a request that never ends) no command is
//! answered.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What can go wrong talking to QEMU's monitor.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached within the time given.
    #[error("cannot connect to the QMP socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The last connection error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP socket I/O while {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// QEMU did not answer in time.
    #[error("QEMU did not answer {what} within {waited:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// QEMU closed the socket (it exited).
    #[error("QEMU closed the QMP socket while {0}")]
    Closed(String),
    /// QEMU sent something that is not QMP as expected.
    #[error("unexpected QMP message while {what}: {message}")]
    Protocol {
        /// What was being done.
        what: String,
        /// The message (or why it could not be parsed).
        message: String,
    },
    /// QEMU refused the command.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// An HMP command ran and printed an error.
    #[error("HMP `{command}` reported: {output}")]
    Hmp {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// The arguments cannot be sent as asked.
    #[error("bad QMP request: {0}")]
    BadRequest(String),
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received and not yet taken, oldest first.
    events: VecDeque<Value>,
    /// Longest wait for one answer.
    timeout: Duration,
    next_id: u64,
    /// QEMU's version from the greeting (`major.minor.micro`).
    version: String,
}

impl Qmp {
    /// Connects to `path` (retrying while QEMU has not created it yet, up
    /// to `timeout`), reads the greeting and leaves capabilities
    /// negotiation. `timeout` is also the deadline of each later answer.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() >= timeout => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let io = |what: &str| {
            let what = what.to_string();
            move |source| QmpError::Io { what, source }
        };
        let writer = stream.try_clone().map_err(io("cloning the socket"))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: VecDeque::new(),
            timeout,
            next_id: 1,
            version: String::new(),
        };
        let greeting = qmp.read_message("waiting for the greeting")?;
        let Some(v) = greeting.get("QMP") else {
            return Err(QmpError::Protocol {
                what: "waiting for the greeting".into(),
                message: greeting.to_string(),
            });
        };
        let q = &v["version"]["qemu"];
        qmp.version = format!("{}.{}.{}", q["major"], q["minor"], q["micro"]);
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// QEMU's version as its greeting gave it (`7.2.22`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Runs `command` with `arguments` (a JSON object, or None) and returns
    /// its `return` value. Events that arrive meanwhile are kept for
    /// [`Qmp::take_events`] and [`Qmp::wait_event`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            if !args.is_object() {
                return Err(QmpError::BadRequest(format!(
                    "the arguments of {command} must be a JSON object, not {args}"
                )));
            }
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        log::debug!("QMP -> {}", line.trim_end());
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| QmpError::Io {
                what: format!("sending {command}"),
                source,
            })?;
        let what = command.to_string();
        let start = Instant::now();
        loop {
            let left = self.timeout.saturating_sub(start.elapsed());
            let msg = self.read_message_within(&what, left)?;
            if msg.get("event").is_some() {
                self.events.push_back(msg);
                continue;
            }
            let got = msg.get("id").and_then(Value::as_u64);
            if got.is_some_and(|g| g < id) {
                // The answer to an earlier command that timed out.
                log::debug!("QMP: late answer dropped: {msg}");
                continue;
            }
            if got != Some(id) {
                return Err(QmpError::Protocol {
                    what,
                    message: msg.to_string(),
                });
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("?").to_string(),
                    desc: err["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            return Err(QmpError::Protocol {
                what,
                message: msg.to_string(),
            });
        }
    }

    /// Runs an HMP command line through `human-monitor-command` and returns
    /// what it printed.
    pub fn hmp(&mut self, command_line: &str) -> Result<String, QmpError> {
        let out = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command_line })),
        )?;
        Ok(out.as_str().unwrap_or_default().to_string())
    }

    /// Runs one `qemu-io` command on the block backend `drive` (the
    /// harness names namespace N's drive `nvmN`, see
    /// [`crate::vm::drive_id`]), e.g. `break write_aio T`, `resume T`,
    /// `remove_break T`. qemu-io reports its errors as text: any output
    /// is taken as an error, since these commands print nothing when they
    /// work.
    pub fn qemu_io(&mut self, drive: &str, command: &str) -> Result<(), QmpError> {
        if command.contains(['"', '\n']) || drive.contains(char::is_whitespace) {
            return Err(QmpError::BadRequest(format!(
                "qemu-io {drive} {command:?}: no quotes or newlines"
            )));
        }
        let line = format!("qemu-io {drive} \"{command}\"");
        let out = self.hmp(&line)?;
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(QmpError::Hmp {
                command: line,
                output: out.trim().to_string(),
            })
        }
    }

    /// The events received so far and not yet taken, oldest first.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// Waits up to `timeout` for an event named `name` (one received
    /// earlier counts) and returns it; earlier events of other names are
    /// kept.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, QmpError> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return Ok(self.events.remove(i).unwrap_or_default());
            }
            let left = timeout.saturating_sub(start.elapsed());
            let msg = self.read_message_within(&format!("event {name}"), left)?;
            if msg.get("event").is_some() {
                self.events.push_back(msg);
            } else {
                return Err(QmpError::Protocol {
                    what: format!("waiting for event {name}"),
                    message: msg.to_string(),
                });
            }
        }
    }

    fn read_message(&mut self, what: &str) -> Result<Value, QmpError> {
        self.read_message_within(what, self.timeout)
    }

    /// Reads one JSON message (one line), waiting at most `limit`.
    fn read_message_within(&mut self, what: &str, limit: Duration) -> Result<Value, QmpError> {
        let start = Instant::now();
        let mut line = String::new();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(QmpError::Timeout {
                    what: what.to_string(),
                    waited: limit,
                });
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|source| QmpError::Io {
                    what: what.to_string(),
                    source,
                })?;
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(QmpError::Closed(what.to_string())),
                Ok(_) if line.ends_with('\n') => break,
                // A partial line: read on for the rest.
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(QmpError::Io {
                        what: what.to_string(),
                        source,
                    });
                }
            }
        }
        log::debug!("QMP <- {}", line.trim_end());
        serde_json::from_str(line.trim_end()).map_err(|e| QmpError::Protocol {
            what: what.to_string(),
            message: format!("{e}: {}", line.trim_end()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU on a socket: sends the greeting, then answers each
    /// request line with the next scripted reply (`{id}` is replaced by the
    /// request's id); `None` sends nothing (for timeouts).
    fn fake(replies: Vec<Option<&'static str>>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut w = stream.try_clone().expect("clone");
            let mut r = BufReader::new(stream);
            w.write_all(
                b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}}, \"capabilities\": [\"oob\"]}}\r\n",
            )
            .expect("greeting");
            let mut line = String::new();
            // The first request is qmp_capabilities.
            r.read_line(&mut line).expect("read");
            let v: Value = serde_json::from_str(&line).expect("json");
            assert_eq!(v["execute"], "qmp_capabilities");
            w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\r\n", v["id"]).as_bytes())
                .expect("reply");
            for reply in replies {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let v: Value = serde_json::from_str(&line).expect("json");
                if let Some(reply) = reply {
                    let text = reply.replace("{id}", &v["id"].to_string());
                    w.write_all(text.as_bytes()).expect("reply");
                }
            }
            // Hold the socket open until the client goes.
            let _ = r.read_line(&mut line);
        });
        (dir, path)
    }

    #[test]
    fn handshake_commands_events_and_errors() {
        let (_dir, path) = fake(vec![
            Some(
                "{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"x\"}}\r\n{\"return\": {\"status\": \"running\"}, \"id\": {id}}\r\n",
            ),
            Some(
                "{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'y' not found\"}, \"id\": {id}}\r\n",
            ),
            Some("{\"return\": \"\", \"id\": {id}}\r\n"),
            Some("{\"return\": \"Unknown event name: nope\\r\\n\", \"id\": {id}}\r\n"),
            None,
        ]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).expect("connect");
        assert_eq!(qmp.version(), "7.2.22");
        let status = qmp.execute("query-status", None).expect("query-status");
        assert_eq!(status["status"], "running");
        let e = qmp
            .wait_event("DEVICE_DELETED", Duration::from_secs(1))
            .expect("event kept");
        assert_eq!(e["data"]["device"], "x");
        match qmp.execute("device_del", Some(json!({"id": "y"}))) {
            Err(QmpError::Command { class, desc, .. }) => {
                assert_eq!(class, "DeviceNotFound");
                assert_eq!(desc, "Device 'y' not found");
            }
            other => panic!("{other:?}"),
        }
        qmp.qemu_io("nvm1", "break write_aio t")
            .expect("quiet qemu-io");
        assert!(matches!(
            qmp.qemu_io("nvm1", "break nope t"),
            Err(QmpError::Hmp { .. })
        ));
        assert!(matches!(
            qmp.qemu_io("nvm1", "say \"hi\""),
            Err(QmpError::BadRequest(_))
        ));
        qmp.timeout = Duration::from_millis(200);
        assert!(matches!(
            qmp.execute("query-status", None),
            Err(QmpError::Timeout { .. })
        ));
        assert!(matches!(
            qmp.execute("x", Some(json!([1]))),
            Err(QmpError::BadRequest(_))
        ));
    }

    #[test]
    fn no_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Qmp::connect(&dir.path().join("none"), Duration::from_millis(100));
        assert!(matches!(e, Err(QmpError::Connect { .. })), "{e:?}");
    }
}
