//! The control protocol's client side: what the CLI verbs (`status`, `start`, `health`, …) do.
//!
//! Blocking std IO on purpose: a CLI verb sends one request and prints the answer, and staying
//! off tokio keeps `iot2mqtt-sv health` (run by Docker every few seconds) cheap. Every function
//! writes its human or JSON output to the writer it is given and returns the process exit code:
//! 0 success, 1 failure (or unhealthy, or the supervisor cannot be reached), 2 usage errors such
//! as an unknown program name.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::control::{Request, code};

/// How long a verb waits for the supervisor's answer (start/stop may take as long as a
/// program's stop timeout; the server answers within its own bound of 60 s).
const REPLY_TIMEOUT: Duration = Duration::from_secs(75);
/// `health` must answer well within Docker's HEALTHCHECK timeout (30 s by default).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a verb could not talk to the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the control socket failed.
    #[error(
        "cannot reach the supervisor at {path}: {source} (is `iot2mqtt-sv run` running? set IOT2MQTT_SV_SOCKET or -s to its control socket)"
    )]
    Connect {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The connection broke or timed out.
    #[error("talking to the supervisor: {0}")]
    Io(#[from] io::Error),
    /// The supervisor sent something that is not a reply.
    #[error("unexpected reply from the supervisor: {0}")]
    Protocol(String),
}

/// A connection to the control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects with a read timeout.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one request.
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// Reads one reply line; `None` at end of stream.
    pub fn recv(&mut self) -> Result<Option<Value>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))
    }

    /// Sends a request and reads its reply.
    pub fn call(&mut self, req: &Request) -> Result<Value, ClientError> {
        self.send(req)?;
        self.recv()?
            .ok_or_else(|| ClientError::Protocol("connection closed without a reply".into()))
    }
}

fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Value, ClientError> {
    Client::connect(socket, timeout)?.call(req)
}

/// Exit code for a failure reply: usage errors (unknown names, bad requests) are 2.
fn failure_code(reply: &Value) -> i32 {
    match reply["error"]["code"].as_str() {
        Some(code::UNKNOWN_PROGRAM)
        | Some(code::UNKNOWN_SIGNAL)
        | Some(code::BAD_REQUEST)
        | Some(code::INVALID_CONFIG) => 2,
        _ => 1,
    }
}

fn print_error(err: &mut dyn Write, reply: &Value) {
    let msg = reply["error"]["message"]
        .as_str()
        .unwrap_or("request failed");
    let _ = writeln!(err, "iot2mqtt-sv: error: {msg}");
}

/// `status [--json]`: the program table, with CPU % and resident memory measured here (the
/// client shares the supervisor's PID namespace, so PID 1 stays free of that cost).
pub fn status(
    socket: &Path,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, ClientError> {
    let reply = call(socket, &Request::Status, REPLY_TIMEOUT)?;
    if reply["ok"] != true {
        print_error(err, &reply);
        return Ok(failure_code(&reply));
    }
    let mut status = reply["status"].clone();
    let pids: Vec<i32> = status["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    let usage = crate::usage::measure(&pids);
    if let Some(programs) = status["programs"].as_array_mut() {
        for p in programs {
            let u = p["pid"].as_i64().and_then(|pid| usage.get(&(pid as i32)));
            p["cpu_percent"] = u.map_or(Value::Null, |u| {
                serde_json::json!((u.cpu_percent * 10.0).round() / 10.0)
            });
            p["rss_bytes"] = u.map_or(Value::Null, |u| serde_json::json!(u.rss_bytes));
        }
    }
    if json {
        let v = serde_json::json!({
            "programs": status["programs"],
            "healthy": status["healthy"],
            "reason": status["reason"],
            "shutting_down": status["shutting_down"],
            "supervisor": reply["supervisor"],
        });
        writeln!(out, "{v}")?;
        return Ok(0);
    }
    let mut rows = vec![
        [
            "NAME", "STATE", "PID", "READY", "UPTIME", "RESTARTS", "EXIT", "CPU%", "RSS", "INFO",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in status["programs"].as_array().into_iter().flatten() {
        let opt = |v: &Value| match v {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        rows.push(vec![
            opt(&p["name"]),
            opt(&p["state"]),
            opt(&p["pid"]),
            if p["ready"] == true {
                "yes".into()
            } else {
                "no".into()
            },
            p["uptime_s"].as_f64().map_or("-".into(), human_duration),
            opt(&p["restarts"]),
            opt(&p["exit_status"]),
            p["cpu_percent"]
                .as_f64()
                .map_or("-".into(), |c| format!("{c:.1}")),
            p["rss_bytes"].as_u64().map_or("-".into(), human_bytes),
            info(p),
        ]);
    }
    write_table(out, &rows)?;
    let health = if status["healthy"] == true {
        "healthy"
    } else {
        "unhealthy"
    };
    writeln!(
        out,
        "\n{health}: {}",
        status["reason"].as_str().unwrap_or("")
    )?;
    if let Some(addr) = reply["supervisor"]["http"].as_str() {
        writeln!(out, "http: http://{addr}/health")?;
    }
    if let Some(n) = reply["supervisor"]["log_lines_dropped"]
        .as_u64()
        .filter(|&n| n > 0)
    {
        writeln!(
            out,
            "log: {n} supervisor log lines dropped (stdout/stderr did not keep up)"
        )?;
    }
    Ok(0)
}

/// The INFO column: why the program is in its state (or its sd_notify status), then what else
/// needs attention.
fn info(p: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(why) = p["reason"].as_str().or(p["status_text"].as_str()) {
        parts.push(why.to_string());
    }
    let s = &p["schedule"];
    if s.is_object() {
        if s["paused"] == true {
            parts.push("schedule paused (start to resume)".into());
        } else if let Some(next) = s["next_run"].as_str() {
            parts.push(format!("next run {next}"));
        }
        if let Some(code) = s["last_exit_code"].as_i64() {
            parts.push(format!(
                "last run exit {code}; {} runs, {} failed, {} skipped",
                s["runs"], s["failed_runs"], s["skipped_runs"]
            ));
        }
    }
    if let Some(n) = p["log_file_dropped_lines"].as_u64().filter(|&n| n > 0) {
        parts.push(format!("log file dropped {n} lines"));
    }
    parts.join("; ")
}

fn write_table(out: &mut dyn Write, rows: &[Vec<String>]) -> io::Result<()> {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn human_duration(s: f64) -> String {
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b}B"),
        1024..1_048_576 => format!("{:.0}K", b as f64 / 1024.0),
        _ => format!("{:.1}M", b as f64 / 1_048_576.0),
    }
}

/// `health`: exit 0 healthy, 1 unhealthy or unreachable; one line of reason either way.
pub fn health(socket: &Path, json: bool, out: &mut dyn Write) -> i32 {
    let (healthy, reason) = match call(socket, &Request::Health, HEALTH_TIMEOUT) {
        Ok(r) if r["ok"] == true => (
            r["healthy"] == true,
            r["reason"].as_str().unwrap_or("").to_string(),
        ),
        Ok(r) => (
            false,
            r["error"]["message"]
                .as_str()
                .unwrap_or("no answer")
                .to_string(),
        ),
        Err(e) => (false, e.to_string()),
    };
    let _ = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"healthy": healthy, "reason": reason})
        )
    } else {
        writeln!(
            out,
            "{}: {reason}",
            if healthy { "healthy" } else { "unhealthy" }
        )
    };
    if healthy { 0 } else { 1 }
}

/// `start|stop|restart NAME...|all`: waits for the outcome and prints one line per program.
pub fn control(
    socket: &Path,
    req: &Request,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, ClientError> {
    let reply = call(socket, req, REPLY_TIMEOUT)?;
    if json {
        writeln!(out, "{reply}")?;
    } else {
        print_results(&reply, out, err)?;
    }
    if reply["ok"] == true {
        Ok(0)
    } else {
        if !json {
            print_error(err, &reply);
        }
        Ok(failure_code(&reply))
    }
}

/// One line per program of a reply's `results`: `name: state` or, on stderr, why not.
fn print_results(reply: &Value, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
    for r in reply["results"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or("?");
        let state = r["state"].as_str().map(str::to_lowercase);
        let msg = r["message"].as_str();
        match (r["ok"] == true, state, msg) {
            (true, Some(s), _) => writeln!(out, "{name}: {s}")?,
            (true, None, _) => writeln!(out, "{name}: ok")?,
            (false, s, m) => writeln!(
                err,
                "{name}: {}{}",
                s.unwrap_or_else(|| "failed".into()),
                m.map(|m| format!(" ({m})")).unwrap_or_default()
            )?,
        }
    }
    Ok(())
}

/// `reload [--dry-run]`: the plan, then (unless a dry run) each program's outcome.
/// An invalid config prints every error and exits 2.
pub fn reload(
    socket: &Path,
    dry_run: bool,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, ClientError> {
    let req = Request::Reload { dry_run };
    if json {
        return control(socket, &req, true, out, err);
    }
    let reply = call(socket, &req, REPLY_TIMEOUT)?;
    for e in reply["errors"].as_array().into_iter().flatten() {
        writeln!(
            err,
            "iot2mqtt-sv: error: {}",
            e.as_str().unwrap_or_default()
        )?;
    }
    let plan = &reply["plan"];
    let names = |key: &str| -> Vec<String> {
        plan[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    for n in names("added") {
        writeln!(out, "add      {n}")?;
    }
    for n in names("removed") {
        writeln!(out, "remove   {n}")?;
    }
    for c in plan["changed"].as_array().into_iter().flatten() {
        let reasons: Vec<&str> = c["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let name = c["name"].as_str().unwrap_or("?");
        writeln!(out, "restart  {name} ({})", reasons.join(", "))?;
    }
    let unchanged = names("unchanged");
    if !unchanged.is_empty() {
        writeln!(out, "keep     {}", unchanged.join(", "))?;
    }
    for k in names("not_applied") {
        writeln!(out, "not applied until the supervisor restarts: {k}")?;
    }
    if !plan.is_null() && plan["added"] == serde_json::json!([]) {
        let nothing = ["removed", "changed"]
            .iter()
            .all(|k| plan[*k] == serde_json::json!([]));
        if nothing {
            writeln!(out, "nothing to change")?;
        }
    }
    if reply["applied"] == true {
        print_results(&reply, out, err)?;
    }
    if reply["ok"] == true {
        Ok(0)
    } else {
        print_error(err, &reply);
        Ok(failure_code(&reply))
    }
}

/// `pid [NAME]`.
pub fn pid(
    socket: &Path,
    program: Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, ClientError> {
    let reply = call(socket, &Request::Pid { program }, REPLY_TIMEOUT)?;
    if reply["ok"] != true {
        print_error(err, &reply);
        return Ok(failure_code(&reply));
    }
    match reply["pid"].as_i64() {
        Some(p) => {
            writeln!(out, "{p}")?;
            Ok(0)
        }
        None => {
            writeln!(err, "iot2mqtt-sv: error: not running")?;
            Ok(1)
        }
    }
}

/// `logs NAME [-f] [-n N]`.
pub fn logs(
    socket: &Path,
    program: String,
    lines: usize,
    follow: bool,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, ClientError> {
    // Following has no natural end: no read timeout then.
    let mut c = Client::connect(
        socket,
        if follow {
            Duration::from_secs(365 * 86400)
        } else {
            REPLY_TIMEOUT
        },
    )?;
    let reply = c.call(&Request::Logs {
        program,
        lines,
        follow,
    })?;
    if reply["ok"] != true {
        print_error(err, &reply);
        return Ok(failure_code(&reply));
    }
    let print = |out: &mut dyn Write, l: &Value| -> io::Result<()> {
        if json {
            writeln!(out, "{l}")
        } else if let Some(n) = l["skipped"].as_u64() {
            writeln!(out, "[{n} lines skipped: the reader was too slow]")
        } else {
            writeln!(out, "{}", l["line"].as_str().unwrap_or(""))
        }
    };
    for l in reply["lines"].as_array().into_iter().flatten() {
        print(out, l)?;
    }
    out.flush()?;
    if follow {
        while let Some(l) = c.recv()? {
            print(out, &l)?;
            out.flush()?;
        }
    }
    Ok(0)
}
