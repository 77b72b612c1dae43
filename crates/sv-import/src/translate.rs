//! The mapping from supervisord sections and options to iot2mqtt-sv programs and notes.
//!
//! Values are interpreted exactly as supervisord's `ServerOptions` does (`integer`, `boolean`,
//! `auto_restart`, `octal_type`, `signal_number`, `list_of_exitcodes`, `process_or_group_name`),
//! after `%(name)s` expansion with the names supervisord offers at that point. Anything
//! supervisord would reject is an error at the option's line; anything iot2mqtt-sv cannot express
//! becomes a [`Note`] (a comment in the output and a warning). Defaults that differ on purpose
//! (`stopasgroup`, `critical`, backoff) are not written: the header of the output names them.

use std::path::{Path, PathBuf};

use sv_core::signal::Signal;

use crate::env::{legacy_differences, parse_pairs};
use crate::expand::{Value, expand};
use crate::ini::{Entry, Ini, Section};
use crate::load::{Loaded, here_of};
use crate::shlex::Lexer;
use crate::{ImportError, Warning};

/// Something the output cannot say as configuration: written as a comment and returned as a
/// warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Note {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl Note {
    pub fn new(file: &Path, line: usize, message: impl Into<String>) -> Note {
        Note {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// One piece of an environment value: literal text, or a variable the supervisor expands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Lit(String),
    Var(String),
}

/// A TOML value the writer knows how to print.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Str(String),
    Int(i64),
    Bool(bool),
    Strs(Vec<String>),
    Ints(Vec<i64>),
}

/// One `[program.NAME]` table.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub name: String,
    /// The `[program:x]` header it came from.
    pub section: String,
    pub file: PathBuf,
    pub line: usize,
    /// Keys in output order.
    pub keys: Vec<(&'static str, Val)>,
    pub environment: Vec<(String, Vec<Part>)>,
    pub notes: Vec<Note>,
}

/// The translated document.
#[derive(Debug, Clone, Default)]
pub(crate) struct Doc {
    /// Notes about the whole file (sections without an equivalent, `[supervisord]` options).
    pub global: Vec<Note>,
    /// Comment lines about `[group:x]` sections (not warnings: nothing is lost).
    pub groups: Vec<Note>,
    pub programs: Vec<Program>,
    /// Whether any program's output went to `/dev/stdout` or similar (the header explains
    /// prefixing then).
    pub container_output: bool,
    /// Whether `[supervisord] environment` was merged into the programs.
    pub merged_global_env: bool,
    /// `[supervisor]` keys with a direct equivalent (`minfds`, `minprocs`).
    pub supervisor_keys: Vec<(&'static str, Val)>,
    /// The files read, main first, to order warnings by.
    pub files: Vec<PathBuf>,
}

impl Doc {
    /// Every note once, in the order they were found.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut all: Vec<&Note> = Vec::new();
        let program_notes = self.programs.iter().flat_map(|p| p.notes.iter());
        for note in self.global.iter().chain(program_notes) {
            if !all.contains(&note) {
                all.push(note);
            }
        }
        let rank = |f: &PathBuf| self.files.iter().position(|x| x == f).unwrap_or(usize::MAX);
        all.sort_by_key(|n| (rank(&n.file), n.line));
        all.into_iter()
            .map(|n| Warning {
                file: n.file.clone(),
                line: n.line,
                message: n.message.clone(),
            })
            .collect()
    }
}

pub(crate) fn translate(
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Doc, ImportError> {
    let mut doc = Doc {
        global: loaded.notes.clone(),
        files: std::iter::once(loaded.origin.clone())
            .chain(loaded.included.iter().cloned())
            .collect(),
        ..Doc::default()
    };
    let ini = &loaded.ini;
    let global_env = match ini.section("supervisord") {
        Some(section) => supervisord_section(loaded, section, env, &mut doc)?,
        None => Vec::new(),
    };
    doc.merged_global_env = !global_env.is_empty();

    // [group:x] membership decides %(group_name)s.
    let mut group_of: Vec<(String, String)> = Vec::new();
    for section in &ini.sections {
        let Some(group) = section.name.strip_prefix("group:") else {
            continue;
        };
        let here = here_of(&section.file);
        let programs_entry = ini.lookup(section, "programs");
        let Some(programs_entry) = programs_entry else {
            return Err(ImportError::invalid(
                &section.file,
                section.line,
                format!("[{}] has no \"programs\" setting", section.name),
            ));
        };
        let programs = expand_plain(programs_entry, &here, env)?;
        let members: Vec<String> = programs
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        for member in &members {
            let known = ini.section(&format!("program:{member}")).is_some();
            if !known {
                return Err(ImportError::invalid(
                    &programs_entry.file,
                    programs_entry.line,
                    format!("[{}] names unknown program {member:?}", section.name),
                ));
            }
            group_of.push((member.clone(), group.to_string()));
        }
        let mut text = format!(
            "[{}] programs={}: groups are not needed; each program is started, stopped and \
             shown under its own name",
            section.name,
            members.join(",")
        );
        if let Some(priority) = ini.lookup(section, "priority") {
            let message = format!(
                "[{}] priority={}: group priorities are not carried over; each program keeps \
                 its own priority (set `priority` or `depends_on` on the programs to order them)",
                section.name, priority.value
            );
            doc.global
                .push(Note::new(&priority.file, priority.line, message));
        } else {
            text.push_str(" (supervisorctl's group:* names have no counterpart)");
        }
        doc.groups
            .push(Note::new(&section.file, section.line, text));
    }

    let mut names: Vec<(String, PathBuf, usize)> = Vec::new();
    for section in &ini.sections {
        let name = section.name.as_str();
        if let Some(program) = name.strip_prefix("program:") {
            let group = group_of
                .iter()
                .find(|(p, _)| p == program)
                .map_or(program, |(_, g)| g.as_str());
            let (programs, orphan_notes) =
                program_section(ini, section, program, group, &global_env, env)?;
            doc.global.extend(orphan_notes);
            for p in programs {
                if let Some((_, file, line)) = names.iter().find(|(n, _, _)| *n == p.name) {
                    return Err(ImportError::invalid(
                        &p.file,
                        p.line,
                        format!(
                            "program name {:?} is already used by the program at {}:{line}",
                            p.name,
                            file.display()
                        ),
                    ));
                }
                names.push((p.name.clone(), p.file.clone(), p.line));
                doc.programs.push(p);
            }
            if let Some(e) = section.get("stdout_logfile")
                && container_stream(&e.value).is_some()
            {
                doc.container_output = true;
            }
        } else if let Some(message) = other_section(name) {
            doc.global
                .push(Note::new(&section.file, section.line, message));
        }
    }
    if doc.programs.is_empty() {
        let file = &loaded.origin;
        doc.global.push(Note::new(
            file,
            1,
            "no [program:x] section: the imported config has no program",
        ));
    }
    Ok(doc)
}

/// The note for a section that is not a program, or `None` when it needs none.
fn other_section(name: &str) -> Option<String> {
    let message = match name {
        "supervisord" | "include" => return None,
        n if n.starts_with("group:") => return None,
        "unix_http_server" => "[unix_http_server]: not needed; the control socket is always on \
             (see [supervisor] control_socket)"
            .to_string(),
        "inet_http_server" => "[inet_http_server]: there is no HTTP/XML-RPC control API; control \
             the supervisor through its control socket, and for health checks and metrics add \
             [supervisor.http] with listen = \"127.0.0.1:PORT\""
            .to_string(),
        "supervisorctl" => "[supervisorctl]: not needed; the iot2mqtt-sv command line talks to \
             the control socket (set $IOT2MQTT_SV_SOCKET to point it elsewhere)"
            .to_string(),
        n if n.starts_with("rpcinterface:") => format!(
            "[{n}]: not needed; there is no XML-RPC interface (the control socket replaces it)"
        ),
        n if n.starts_with("eventlistener:") => format!(
            "[{n}]: event listeners are not supported and were not imported; a program that goes \
             FATAL already stops the container (critical = true, the default), and `status` or \
             [supervisor.http] show program states"
        ),
        n if n.starts_with("fcgi-program:") => format!(
            "[{n}]: FastCGI programs are not supported; run the server as a [program] that opens \
             its own socket"
        ),
        n if n.starts_with("ctlplugin:") => {
            format!("[{n}]: supervisorctl plugins are not supported")
        }
        n => format!("[{n}]: unknown section; supervisord ignores it too"),
    };
    Some(message)
}

/// Environment variables fixed at import time, to warn about once per value.
#[derive(Debug, Default)]
struct Baked {
    vars: Vec<String>,
    missing: Option<String>,
}

/// Expands an option outside any program (names: `here`, `host_node_name`, `ENV_X`), fixing
/// `ENV_X` at import time.
fn expand_plain(
    entry: &Entry,
    here: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ImportError> {
    expand(&entry.value, &mut |name: &str| match name {
        "here" => Some(Value::Str(here.to_string())),
        "host_node_name" => env("HOSTNAME").map(Value::Str),
        _ => name.strip_prefix("ENV_").and_then(env).map(Value::Str),
    })
    .map_err(|m| ImportError::invalid(&entry.file, entry.line, format!("{}: {m}", entry.key)))
}

fn supervisord_section(
    loaded: &Loaded,
    section: &Section,
    env: &dyn Fn(&str) -> Option<String>,
    doc: &mut Doc,
) -> Result<Vec<(String, Vec<Part>)>, ImportError> {
    let here = here_of(&loaded.origin);
    let mut global_env = Vec::new();
    let logfile_is_container = section
        .get("logfile")
        .is_some_and(|e| container_stream(&e.value).is_some());
    for entry in &section.entries {
        let value = entry.value.as_str();
        let message: Option<String> = match entry.key.as_str() {
            // iot2mqtt-sv never daemonizes.
            "nodaemon" => None,
            "environment" => {
                let (pairs, legacy) = environment(entry, &[], &mut |name: &str| match name {
                    "here" => Some(Value::Str(here.clone())),
                    "host_node_name" => env("HOSTNAME").map(Value::Str),
                    _ => None,
                })
                .map_err(|e| prefix_error(e, "[supervisord]"))?;
                global_env = pairs;
                for mut note in legacy {
                    note.message = format!("[supervisord] {}", note.message);
                    doc.global.push(note);
                }
                None
            }
            "logfile" if logfile_is_container => None,
            "logfile" => Some(format!(
                "[supervisord] logfile={value}: not needed; iot2mqtt-sv writes its own events to \
                 the container output (choose the format with [supervisor] log_format)"
            )),
            "logfile_maxbytes" | "logfile_backups" | "identifier" | "childlogdir" | "nocleanup" => {
                None
            }
            "loglevel" => Some(format!(
                "[supervisord] loglevel={value}: not imported; the supervisor's own verbosity is \
                 set where iot2mqtt-sv is started, not in its config"
            )),
            "pidfile" => Some(format!(
                "[supervisord] pidfile={value}: not needed; iot2mqtt-sv runs in the foreground \
                 and writes no pid file"
            )),
            "user" => Some(format!(
                "[supervisord] user={value}: not imported; iot2mqtt-sv runs as the container's \
                 user (Dockerfile USER) and `user` on a program drops privileges for it"
            )),
            "umask" => Some(format!(
                "[supervisord] umask={value}: supervisord applies it only when daemonizing; set \
                 `umask` on the programs that need it"
            )),
            "directory" => Some(format!(
                "[supervisord] directory={value}: supervisord changes to it only when \
                 daemonizing; set `directory` on the programs that need it"
            )),
            key @ ("minfds" | "minprocs") => match value.trim().parse::<i64>() {
                Ok(n) if n >= 1 => {
                    let key = if key == "minfds" {
                        "minfds"
                    } else {
                        "minprocs"
                    };
                    doc.supervisor_keys.push((key, Val::Int(n)));
                    None
                }
                _ => Some(format!(
                    "[supervisord] {key}={value}: not a positive integer, not imported"
                )),
            },
            "strip_ansi" => Some(format!(
                "[supervisord] strip_ansi={value}: not supported; program output is passed \
                 through unchanged"
            )),
            "silent" => Some(format!(
                "[supervisord] silent={value}: not supported; the supervisor always logs to the \
                 container output"
            )),
            other => Some(format!(
                "[supervisord] {other}={value}: unknown option; supervisord ignores it too"
            )),
        };
        if let Some(message) = message {
            doc.global.push(Note::new(&entry.file, entry.line, message));
        }
    }
    Ok(global_env)
}

/// Which container stream a log file name means, if any.
fn container_stream(value: &str) -> Option<u8> {
    match value {
        "/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1" => Some(1),
        "/dev/stderr" | "/dev/fd/2" | "/proc/self/fd/2" => Some(2),
        _ => None,
    }
}

type EnvPairs = (Vec<(String, Vec<Part>)>, Vec<Note>);

/// Parses an `environment=` entry into parts: `%(ENV_X)s` the static maps do not know becomes a
/// `${X}` for the supervisor to expand when it starts, as supervisord expands it when it starts.
/// Also returns a note per key that supervisord 4.2 would read differently.
fn environment(
    entry: &Entry,
    known: &[(String, Vec<Part>)],
    lookup: &mut dyn FnMut(&str) -> Option<Value>,
) -> Result<EnvPairs, ImportError> {
    let err =
        |m: String| ImportError::invalid(&entry.file, entry.line, format!("environment: {m}"));
    // A placeholder made of word characters, so the tokenizer keeps it inside its word.
    let mut nonce = 0u32;
    while entry.value.contains(&format!("SVIMPORT{nonce}x")) {
        nonce += 1;
    }
    let marker = format!("SVIMPORT{nonce}x");
    let mut slots: Vec<Vec<Part>> = Vec::new();
    let expanded = expand(&entry.value, &mut |name: &str| {
        if let Some(var) = name.strip_prefix("ENV_") {
            let parts = match known.iter().find(|(k, _)| k == var) {
                Some((_, parts)) if parts.iter().all(|p| matches!(p, Part::Lit(_))) => {
                    return Some(Value::Str(literal(parts)));
                }
                Some((_, parts)) => parts.clone(),
                None => vec![Part::Var(var.to_string())],
            };
            slots.push(parts);
            return Some(Value::Verbatim(format!("{marker}{}x", slots.len() - 1)));
        }
        lookup(name)
    })
    .map_err(err)?;
    let pairs = parse_pairs(&expanded).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for (key, value) in &pairs {
        if key.contains(&marker) {
            return Err(err(format!(
                "a %(ENV_...)s in the name of a variable is not supported ({:?})",
                entry.value
            )));
        }
        if !valid_env_name(key) {
            return Err(err(format!(
                "{key:?} is not a valid environment variable name"
            )));
        }
        if value.contains('\0') {
            return Err(err(format!("the value of {key} contains a NUL character")));
        }
        out.push((key.clone(), split_markers(value, &marker, &slots)));
    }
    let mut legacy = Vec::new();
    for (key, old) in legacy_differences(&expanded, &pairs) {
        let current = pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        legacy.push(Note::new(
            &entry.file,
            entry.line,
            format!(
                "environment: supervisord 4.2 reads {key} as {old:?}, supervisord 4.4 and the \
                 importer as {current:?}; check which one the program expects"
            ),
        ));
    }
    Ok((out, legacy))
}

fn literal(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => s.as_str(),
            Part::Var(_) => "",
        })
        .collect()
}

fn split_markers(value: &str, marker: &str, slots: &[Vec<Part>]) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find(marker) {
        let after = &rest[at + marker.len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        let slot = after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|i| slots.get(i));
        match (slot, after[digits..].starts_with('x')) {
            (Some(slot), true) => {
                push_lit(&mut parts, &rest[..at]);
                for part in slot {
                    match part {
                        Part::Lit(s) => push_lit(&mut parts, s),
                        Part::Var(v) => parts.push(Part::Var(v.clone())),
                    }
                }
                rest = &after[digits + 1..];
            }
            _ => {
                push_lit(&mut parts, &rest[..at + marker.len()]);
                rest = after;
            }
        }
    }
    push_lit(&mut parts, rest);
    parts
}

fn push_lit(parts: &mut Vec<Part>, s: &str) {
    if s.is_empty() {
        return;
    }
    if let Some(Part::Lit(last)) = parts.last_mut() {
        last.push_str(s);
    } else {
        parts.push(Part::Lit(s.to_string()));
    }
}

fn valid_env_name(key: &str) -> bool {
    !key.is_empty() && !key.contains('=') && !key.chars().any(|c| c.is_control())
}

/// Python's `int()` on a config string: surrounding whitespace, a sign, `_` between digits.
fn py_int(value: &str) -> Option<i64> {
    let s = value.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let n: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -n } else { n })
}

fn py_bool(value: &str) -> Option<bool> {
    match value.to_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// The byte count of supervisord's `byte_size` ("50MB", "0", "1KB").
fn is_zero_bytes(value: &str) -> bool {
    let v = value.trim().to_uppercase();
    let digits = v
        .strip_suffix("KB")
        .or_else(|| v.strip_suffix("MB"))
        .or_else(|| v.strip_suffix("GB"))
        .unwrap_or(&v);
    py_int(digits) == Some(0)
}

/// Linux signal numbers of the signals iot2mqtt-sv can send.
fn signal_by_number(n: i64) -> Option<Signal> {
    Some(match n {
        1 => Signal::Hup,
        2 => Signal::Int,
        3 => Signal::Quit,
        9 => Signal::Kill,
        10 => Signal::Usr1,
        12 => Signal::Usr2,
        14 => Signal::Alrm,
        15 => Signal::Term,
        18 => Signal::Cont,
        19 => Signal::Stop,
        28 => Signal::Winch,
        30 => Signal::Pwr,
        _ => return None,
    })
}

/// A program name as iot2mqtt-sv accepts it: `[a-zA-Z0-9_.-]+`.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Translates one `[program:x]` into one program per process (`numprocs`); the notes returned
/// beside them are those with no program to attach to (`numprocs=0`).
fn program_section(
    ini: &Ini,
    section: &Section,
    program_name: &str,
    group_name: &str,
    global_env: &[(String, Vec<Part>)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<Program>, Vec<Note>), ImportError> {
    let header = format!("[{}]", section.name);
    // supervisord's `process_or_group_name`.
    if let Some(c) = [' ', ':', '/']
        .into_iter()
        .find(|&c| program_name.trim().contains(c))
    {
        return Err(ImportError::invalid(
            &section.file,
            section.line,
            format!("{header}: invalid program name (contains {c:?}), as supervisord says too"),
        ));
    }
    let reader = ProgramReader {
        ini,
        section,
        header,
        program_name: program_name.trim(),
        group_name,
        global_env,
        env,
    };
    let mut options = reader.options()?;
    if options.numprocs < 1 {
        return Ok((Vec::new(), options.notes));
    }
    let Some(command) = reader.get("command") else {
        return Err(ImportError::invalid(
            &section.file,
            section.line,
            format!("{} does not specify a command", reader.header),
        ));
    };
    options.notes.sort_by_key(|n| (n.file.clone(), n.line));
    let nums: Vec<i64> =
        (options.numprocs_start..options.numprocs_start + options.numprocs).collect();
    let programs = nums
        .iter()
        .map(|&num| {
            let process = Process {
                num,
                numprocs: options.numprocs,
            };
            reader.process(&options, command, process)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // One group when it says the same as the separate programs (see `group.rs`).
    let table = sanitize_name(reader.program_name);
    if let Some(group) = crate::group::fold(&programs, &nums, &table) {
        return Ok((vec![group], Vec::new()));
    }
    Ok((programs, Vec::new()))
}

/// Every option supervisord knows in a `[program:x]` section.
const PROGRAM_OPTIONS: &[&str] = &[
    "command",
    "process_name",
    "numprocs",
    "numprocs_start",
    "priority",
    "autostart",
    "autorestart",
    "startsecs",
    "startretries",
    "exitcodes",
    "stopsignal",
    "stopwaitsecs",
    "stopasgroup",
    "killasgroup",
    "redirect_stderr",
    "user",
    "umask",
    "directory",
    "environment",
    "stdout_logfile",
    "stderr_logfile",
    "stdout_logfile_maxbytes",
    "stderr_logfile_maxbytes",
    "stdout_logfile_backups",
    "stderr_logfile_backups",
    "stdout_capture_maxbytes",
    "stderr_capture_maxbytes",
    "stdout_events_enabled",
    "stderr_events_enabled",
    "stdout_syslog",
    "stderr_syslog",
    "serverurl",
];

/// `process_num` and `numprocs`, which supervisord offers once it iterates over the processes.
#[derive(Debug, Clone, Copy)]
struct Process {
    num: i64,
    numprocs: i64,
}

/// What a section says independently of the process number.
#[derive(Debug)]
struct SectionOptions {
    /// Keys after `command`, `directory`, `user` and `umask`, in output order.
    keys: Vec<(&'static str, Val)>,
    user: Option<String>,
    umask: Option<u32>,
    redirect_stderr: bool,
    numprocs: i64,
    numprocs_start: i64,
    /// The raw `process_name` and where it was set (the section header when defaulted).
    process_name: Entry,
    notes: Vec<Note>,
}

/// Reads one `[program:x]` section the way supervisord's `processes_from_section` does.
struct ProgramReader<'a> {
    ini: &'a Ini,
    section: &'a Section,
    /// `[program:x]`, the prefix of every message.
    header: String,
    program_name: &'a str,
    group_name: &'a str,
    global_env: &'a [(String, Vec<Part>)],
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl ProgramReader<'_> {
    fn get(&self, key: &str) -> Option<&Entry> {
        self.ini.lookup(self.section, key)
    }

    fn bad(&self, e: &Entry, message: impl std::fmt::Display) -> ImportError {
        ImportError::invalid(
            &e.file,
            e.line,
            format!("{} {}: {message}", self.header, e.key),
        )
    }

    fn note(&self, e: &Entry, message: impl std::fmt::Display) -> Note {
        Note::new(&e.file, e.line, format!("{} {message}", self.header))
    }

    /// Expands `e` with the names supervisord offers: `process` ones only inside the process
    /// loop, `ENV_X` from the program's own environment, then `[supervisord] environment`, then
    /// (fixed now, with a note) the import's environment.
    fn expand(
        &self,
        e: &Entry,
        process: Option<Process>,
        own_env: &[(String, Vec<Part>)],
        notes: &mut Vec<Note>,
    ) -> Result<String, ImportError> {
        let here = here_of(&e.file);
        let mut baked = Baked::default();
        let result = expand(&e.value, &mut |name: &str| match name {
            "here" => Some(Value::Str(here.clone())),
            "program_name" => Some(Value::Str(self.program_name.to_string())),
            "group_name" => Some(Value::Str(self.group_name.to_string())),
            "process_num" => process.map(|p| Value::Int(p.num)),
            "numprocs" => process.map(|p| Value::Int(p.numprocs)),
            "host_node_name" => bake_host(&mut baked, self.env),
            _ => {
                let var = name.strip_prefix("ENV_")?;
                match own_env
                    .iter()
                    .chain(self.global_env)
                    .find(|(k, _)| k == var)
                {
                    Some((_, parts)) => resolve_parts(parts, &mut baked, self.env),
                    None => bake(&mut baked, var, self.env),
                }
            }
        });
        let value = result.map_err(|m| self.bad(e, missing_hint(m, &baked)))?;
        note_baked(notes, e, &self.header, &baked);
        Ok(value)
    }

    /// The option `key`, expanded as supervisord does before the process loop.
    fn value(
        &self,
        key: &str,
        notes: &mut Vec<Note>,
    ) -> Result<Option<(Entry, String)>, ImportError> {
        let Some(e) = self.get(key) else {
            return Ok(None);
        };
        let value = self.expand(e, None, &[], notes)?;
        Ok(Some((e.clone(), value)))
    }

    fn int(&self, e: &Entry, v: &str) -> Result<i64, ImportError> {
        py_int(v).ok_or_else(|| self.bad(e, format!("{v:?} is not an integer")))
    }

    fn boolean(&self, e: &Entry, v: &str) -> Result<bool, ImportError> {
        py_bool(v).ok_or_else(|| {
            self.bad(
                e,
                format!("{v:?} is not a boolean (true/false, yes/no, on/off, 1/0)"),
            )
        })
    }

    /// Everything before supervisord's process loop, plus the notes that concern the section.
    fn options(&self) -> Result<SectionOptions, ImportError> {
        let mut notes = Vec::new();
        let mut keys: Vec<(&'static str, Val)> = Vec::new();
        if let Some((e, v)) = self.value("priority", &mut notes)? {
            let n = self.int(&e, &v)?;
            let n = i32::try_from(n).map_err(|_| self.bad(&e, format!("{n} is out of range")))?;
            keys.push(("priority", Val::Int(n.into())));
        }
        if let Some((e, v)) = self.value("autostart", &mut notes)?
            && !self.boolean(&e, &v)?
        {
            keys.push(("autostart", Val::Bool(false)));
        }
        if let Some((e, v)) = self.value("autorestart", &mut notes)? {
            let lower = v.to_lowercase();
            match (py_bool(&lower), lower.as_str()) {
                (Some(always), _) => keys.push(("autorestart", Val::Bool(always))),
                (None, "unexpected") => {}
                _ => {
                    return Err(
                        self.bad(&e, format!("{v:?} is not one of true, false, unexpected"))
                    );
                }
            }
        }
        if let Some((e, v)) = self.value("exitcodes", &mut notes)? {
            let mut codes = Vec::new();
            // supervisord's `list_of_exitcodes`: an empty value is an empty list.
            if !v.is_empty() {
                for part in v.split(',') {
                    let code = py_int(part)
                        .filter(|c| (0..=255).contains(c))
                        .ok_or_else(|| {
                            self.bad(&e, format!("{v:?} is not a list of exit codes 0-255"))
                        })?;
                    codes.push(code);
                }
            }
            if codes != [0] {
                keys.push(("exitcodes", Val::Ints(codes)));
            }
        }
        for (key, default) in [("startsecs", 1), ("startretries", 3)] {
            if let Some((e, v)) = self.value(key, &mut notes)? {
                let n = self.int(&e, &v)?;
                if n < 0 || n > i64::from(u32::MAX) {
                    return Err(self.bad(&e, format!("{n} is out of range (0 or more)")));
                }
                if n != default {
                    keys.push((key, Val::Int(n)));
                }
            }
        }
        if let Some((e, v)) = self.value("stopsignal", &mut notes)? {
            let signal = match py_int(&v) {
                Some(n) => signal_by_number(n),
                None => v.parse::<Signal>().ok(),
            }
            .ok_or_else(|| {
                self.bad(
                    &e,
                    format!(
                        "signal {v:?} is not one iot2mqtt-sv can send (HUP, INT, QUIT, KILL, \
                         USR1, USR2, TERM, CONT, STOP, WINCH, ALRM, PWR)"
                    ),
                )
            })?;
            if signal != Signal::Term {
                keys.push(("stopsignal", Val::Str(signal.name().to_string())));
            }
        }
        if let Some((e, v)) = self.value("stopwaitsecs", &mut notes)? {
            let mut n = self.int(&e, &v)?;
            if n < 0 {
                return Err(self.bad(&e, format!("{n} is out of range (0 or more)")));
            }
            if n == 0 {
                notes.push(self.note(
                    &e,
                    "stopwaitsecs=0: written as 1, since the wait must be positive here \
                     (supervisord itself checks for the deadline only about once a second)",
                ));
                n = 1;
            }
            if n != 10 {
                keys.push(("stopwaitsecs", Val::Int(n)));
            }
        }
        let stopasgroup = match self.value("stopasgroup", &mut notes)? {
            Some((e, v)) => Some(self.boolean(&e, &v)?),
            None => None,
        };
        let killasgroup = match self.value("killasgroup", &mut notes)? {
            Some((e, v)) => Some((self.boolean(&e, &v)?, e)),
            None => None,
        };
        if let (Some(true), Some((false, e))) = (stopasgroup, &killasgroup) {
            return Err(self.bad(
                e,
                "stopasgroup=true with killasgroup=false is rejected by supervisord too",
            ));
        }
        // iot2mqtt-sv signals the group unless told not to, and killasgroup follows
        // stopasgroup: each is written only where it departs from that.
        let stop = stopasgroup.unwrap_or(true);
        if !stop {
            keys.push(("stopasgroup", Val::Bool(false)));
        }
        if let Some((kill, _)) = killasgroup
            && kill != stop
        {
            keys.push(("killasgroup", Val::Bool(kill)));
        }
        let mut redirect_stderr = match self.value("redirect_stderr", &mut notes)? {
            Some((e, v)) => self.boolean(&e, &v)?,
            None => false,
        };
        let user = self.value("user", &mut notes)?.map(|(_, v)| v);
        let umask = match self.value("umask", &mut notes)? {
            Some((e, v)) => {
                let digits = v.trim();
                let digits = digits
                    .strip_prefix("0o")
                    .or_else(|| digits.strip_prefix("0O"))
                    .unwrap_or(digits);
                let n = u32::from_str_radix(digits, 8)
                    .ok()
                    .filter(|n| *n <= 0o777)
                    .ok_or_else(|| self.bad(&e, format!("{v:?} is not an octal umask")))?;
                Some(n)
            }
            None => None,
        };
        let (numprocs, numprocs_entry) = match self.value("numprocs", &mut notes)? {
            Some((e, v)) => (self.int(&e, &v)?, Some(e)),
            None => (1, None),
        };
        let numprocs_start = match self.value("numprocs_start", &mut notes)? {
            Some((e, v)) => self.int(&e, &v)?,
            None => 0,
        };
        let process_name = self.get("process_name").cloned().unwrap_or_else(|| Entry {
            key: "process_name".into(),
            value: "%(program_name)s".into(),
            file: self.section.file.clone(),
            line: self.section.line,
        });
        if numprocs > 1 && !process_name.value.contains("%(process_num)") {
            let e = self
                .get("process_name")
                .or(numprocs_entry.as_ref())
                .unwrap_or(&process_name);
            return Err(self.bad(
                e,
                "%(process_num) must be present within process_name when numprocs > 1",
            ));
        }
        notes.extend(output_notes(
            self.ini,
            self.section,
            &self.header,
            &mut redirect_stderr,
        ));
        for e in &self.section.entries {
            if PROGRAM_OPTIONS.contains(&e.key.as_str()) {
                continue;
            }
            let suggestion = PROGRAM_OPTIONS
                .iter()
                .map(|k| (strsim::jaro_winkler(k, &e.key), k))
                .filter(|(score, _)| *score > 0.9)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| format!(" (did you mean {k:?}?)"))
                .unwrap_or_default();
            notes.push(self.note(
                e,
                format!(
                    "{}: unknown option, not imported; supervisord ignores it too{suggestion}",
                    e.key
                ),
            ));
        }
        if numprocs < 1 {
            let e = numprocs_entry.as_ref().unwrap_or(&process_name);
            notes.push(self.note(
                e,
                format!("numprocs={numprocs}: no process is started, so none was imported"),
            ));
        }
        Ok(SectionOptions {
            keys,
            user,
            umask,
            redirect_stderr,
            numprocs,
            numprocs_start,
            process_name,
            notes,
        })
    }

    /// One process of the section.
    fn process(
        &self,
        options: &SectionOptions,
        command: &Entry,
        process: Process,
    ) -> Result<Program, ImportError> {
        let mut notes = options.notes.clone();
        let name_entry = &options.process_name;
        let raw_name = self.expand(name_entry, Some(process), &[], &mut notes)?;
        let raw_name = raw_name.trim();
        if raw_name.is_empty() {
            return Err(self.bad(name_entry, "the process name is empty"));
        }
        let name = sanitize_name(raw_name);
        if name != raw_name {
            notes.push(Note::new(
                &name_entry.file,
                name_entry.line,
                format!(
                    "{}: process name {raw_name:?} renamed to {name:?} (iot2mqtt-sv names use \
                     only letters, digits, '_', '.' and '-')",
                    self.header
                ),
            ));
        }

        // supervisord parses the environment first, then offers it as ENV_X to the options
        // read after it (directory, command).
        let mut own_env: Vec<(String, Vec<Part>)> = Vec::new();
        if let Some(e) = self.get("environment") {
            let here = here_of(&e.file);
            let mut baked = Baked::default();
            let (pairs, legacy) = environment(e, self.global_env, &mut |name: &str| match name {
                "here" => Some(Value::Str(here.clone())),
                "program_name" => Some(Value::Str(self.program_name.to_string())),
                "group_name" => Some(Value::Str(self.group_name.to_string())),
                "process_num" => Some(Value::Int(process.num)),
                "numprocs" => Some(Value::Int(process.numprocs)),
                "host_node_name" => bake_host(&mut baked, self.env),
                _ => None,
            })
            .map_err(|err| prefix_error(err, &self.header))?;
            note_baked(&mut notes, e, &self.header, &baked);
            notes.extend(legacy.into_iter().map(|n| self.note(e, n.message)));
            own_env = pairs;
        }
        // [supervisord] environment first, the program's own values win.
        let mut environment = self.global_env.to_vec();
        for (k, v) in &own_env {
            match environment.iter_mut().find(|(ek, _)| ek == k) {
                Some(slot) => slot.1 = v.clone(),
                None => environment.push((k.clone(), v.clone())),
            }
        }

        let mut keys: Vec<(&'static str, Val)> = Vec::new();
        let command_text = self.expand(command, Some(process), &own_env, &mut notes)?;
        let argv = Lexer::split()
            .tokens(&command_text)
            .map_err(|e| self.bad(command, format!("cannot split {command_text:?}: {e}")))?;
        if argv.is_empty() {
            return Err(self.bad(command, "the command is empty"));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(self.bad(command, "the command contains a NUL character"));
        }
        keys.push(("command", Val::Strs(argv)));
        if let Some(e) = self.get("directory") {
            let dir = self.expand(e, Some(process), &own_env, &mut notes)?;
            keys.push(("directory", Val::Str(dir)));
        }
        if let Some(user) = &options.user {
            keys.push(("user", Val::Str(user.clone())));
        }
        if let Some(m) = options.umask {
            keys.push(("umask", Val::Str(format!("{m:03o}"))));
        }
        keys.extend(options.keys.iter().cloned());
        if options.redirect_stderr {
            keys.push(("redirect_stderr", Val::Bool(true)));
        }
        notes.sort_by_key(|n| (n.file.clone(), n.line));
        notes.dedup();
        Ok(Program {
            name,
            section: self.section.name.clone(),
            file: self.section.file.clone(),
            line: self.section.line,
            keys,
            environment,
            notes,
        })
    }
}

fn prefix_error(err: ImportError, header: &str) -> ImportError {
    match err {
        ImportError::Invalid {
            file,
            line,
            message,
        } => ImportError::Invalid {
            file,
            line,
            message: format!("{header} {message}"),
        },
        other => other,
    }
}

/// A `%(ENV_X)s` outside `environment`: the value is fixed now.
fn bake(baked: &mut Baked, var: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<Value> {
    match env(var) {
        Some(v) => {
            let shown = format!("%(ENV_{var})s");
            if !baked.vars.contains(&shown) {
                baked.vars.push(shown);
            }
            Some(Value::Str(v))
        }
        None => {
            baked.missing = Some(var.to_string());
            None
        }
    }
}

/// `%(host_node_name)s`: supervisord's host name, taken from `$HOSTNAME` at import time.
fn bake_host(baked: &mut Baked, env: &dyn Fn(&str) -> Option<String>) -> Option<Value> {
    let value = bake(baked, "HOSTNAME", env)?;
    if let Some(last) = baked.vars.last_mut()
        && last == "%(ENV_HOSTNAME)s"
    {
        *last = "%(host_node_name)s (from $HOSTNAME)".to_string();
    }
    Some(value)
}

/// A known environment value used outside `environment`: literal parts as they are, variables
/// fixed now.
fn resolve_parts(
    parts: &[Part],
    baked: &mut Baked,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Value> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Lit(s) => out.push_str(s),
            Part::Var(v) => match bake(baked, v, env)? {
                Value::Str(s) => out.push_str(&s),
                _ => return None,
            },
        }
    }
    Some(Value::Str(out))
}

fn missing_hint(message: String, baked: &Baked) -> String {
    match &baked.missing {
        Some(var) if var == "HOSTNAME" && message.contains("host_node_name") => format!(
            "{message}: %(host_node_name)s is fixed at import time from $HOSTNAME, which is not \
             set"
        ),
        Some(var) => format!(
            "{message}: environment variable {var} is not set where the import runs; \
             iot2mqtt-sv expands variables only in `environment`, so set {var} for the import \
             (its value is written into the config) or move it into `environment`"
        ),
        None => message,
    }
}

fn note_baked(notes: &mut Vec<Note>, e: &Entry, header: &str, baked: &Baked) {
    if baked.vars.is_empty() {
        return;
    }
    let vars = baked.vars.join(", ");
    notes.push(Note::new(
        &e.file,
        e.line,
        format!(
            "{header} {}: {vars} replaced by the value it has where the import ran, because \
             iot2mqtt-sv expands variables only in `environment`; check the value",
            e.key
        ),
    ));
}

/// Notes for the output options, and `stderr_logfile=/dev/stdout` as `redirect_stderr`.
fn output_notes(
    ini: &Ini,
    section: &Section,
    header: &str,
    redirect_stderr: &mut bool,
) -> Vec<Note> {
    let mut notes = Vec::new();
    let mut note = |e: &Entry, m: String| {
        notes.push(Note::new(
            &e.file,
            e.line,
            format!("{header} {}={}: {m}", e.key, e.value),
        ))
    };
    for stream in ["stdout", "stderr"] {
        let logfile = ini.lookup(section, &format!("{stream}_logfile"));
        // True when the stream still ends up in supervisord's automatic log files.
        let mut auto = logfile.is_none();
        if let Some(e) = logfile {
            let lower = e.value.to_lowercase();
            match (container_stream(&e.value), lower.as_str()) {
                (Some(1), _) if stream == "stderr" => *redirect_stderr = true,
                (Some(_), _) => {}
                _ if stream == "stderr" && *redirect_stderr => {}
                (None, "none" | "off") => note(
                    e,
                    "output is not discarded: it is captured and written to the container output; \
                     to drop it, redirect inside the command (sh -c 'exec prog >/dev/null')"
                        .into(),
                ),
                (None, "auto") => {
                    auto = true;
                    note(
                        e,
                        "no automatic log files: output is captured and written to the container \
                         output, prefixed with the program name"
                            .into(),
                    )
                }
                (None, "syslog") => note(
                    e,
                    "no syslog: output is captured and written to the container output; forward \
                     it with Docker's syslog logging driver"
                        .into(),
                ),
                (None, _) => note(
                    e,
                    format!(
                        "not imported: output is captured and written to the container output, \
                         prefixed with the program name (`iot2mqtt-sv logs` shows recent lines); \
                         for a copy in a size-rotated file add log_file = {{ path = {:?} }} to the \
                         program (one file for both streams)",
                        e.value
                    ),
                ),
            }
        }
        for suffix in ["logfile_maxbytes", "logfile_backups"] {
            if let Some(e) = ini.lookup(section, &format!("{stream}_{suffix}"))
                && auto
                && !is_zero_bytes(&e.value)
            {
                note(
                    e,
                    "not imported: output goes to the container output, which Docker's logging \
                     driver rotates; a log_file has its own max_bytes and backups"
                        .into(),
                );
            }
        }
        if let Some(e) = ini.lookup(section, &format!("{stream}_capture_maxbytes"))
            && !is_zero_bytes(&e.value)
        {
            note(e, "process communication events are not supported".into());
        }
        for key in [
            format!("{stream}_events_enabled"),
            format!("{stream}_syslog"),
        ] {
            if let Some(e) = ini.lookup(section, &key)
                && py_bool(&e.value) != Some(false)
            {
                let m = if key.ends_with("syslog") {
                    "no syslog: forward the container output with Docker's syslog logging driver"
                } else {
                    "output events for event listeners are not supported"
                };
                note(e, m.into());
            }
        }
    }
    if let Some(e) = ini.lookup(section, "serverurl")
        && !e.value.trim().eq_ignore_ascii_case("auto")
    {
        note(
            e,
            "there is no XML-RPC server; programs reach the supervisor through the control socket \
             ($IOT2MQTT_SV_SOCKET)"
                .into(),
        );
    }
    notes
}
