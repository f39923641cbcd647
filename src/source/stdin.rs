//! The stdin source of the daemon (`- stdin: {}`): lines as they come, until end of input.
//! There is nothing to resume after a restart.

use std::sync::Arc;
use std::time::Instant;

use super::batch::{Batch, Encoding, Input, Progress, Shape, Sink};

/// Reads stdin line-wise into the engine until EOF.
pub fn read_stdin(name: Arc<str>, sink: &mut dyn Sink) {
    use std::io::Read;
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut partial: Vec<u8> = Vec::new();
    let (mut line, mut offset) = (1u64, 0u64);
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "stdin read failed");
                break;
            }
        };
        partial.extend_from_slice(&buf[..n]);
        let Some(last) = memchr::memrchr(b'\n', &partial) else {
            continue;
        };
        let rest = partial.split_off(last + 1);
        let data = std::mem::replace(&mut partial, rest);
        let lines = memchr::memchr_iter(b'\n', &data).count() as u64;
        let len = data.len() as u64;
        let batch = Batch {
            origin: None,
            source: Arc::clone(&name),
            data,
            encoding: Encoding::Plain,
            shape: Shape::Lines {
                first_line: line,
                offset,
            },
            progress: Progress::None,
            received: Instant::now(),
        };
        if !sink.send(Input::Batch(batch)) {
            return;
        }
        line += lines;
        offset += len;
    }
    if !partial.trim_ascii().is_empty() {
        sink.send(Input::Batch(Batch {
            origin: None,
            source: Arc::clone(&name),
            data: partial,
            encoding: Encoding::Plain,
            shape: Shape::Lines {
                first_line: line,
                offset,
            },
            progress: Progress::None,
            received: Instant::now(),
        }));
    }
    tracing::info!(source = %name, "stdin closed");
}
