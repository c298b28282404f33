//! Reading a container's log: stdout and stderr merged, in the order they were written.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every line of the log at `path` (a last line without a newline included); empty if the
/// log does not exist yet.
pub fn read_log(path: &Path) -> io::Result<Vec<String>> {
    match std::fs::read(path) {
        Ok(data) => Ok(String::from_utf8_lossy(&data)
            .lines()
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The last `n` lines of the log at `path`.
pub fn read_log_tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut lines = read_log(path)?;
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// Follows a log as it grows, line by line.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    pending: Vec<u8>,
    poll: Duration,
}

impl LogFollower {
    /// Follows the log at `path`, from its start or from its current end. The file may not
    /// exist yet.
    pub fn open(path: &Path, from_start: bool) -> io::Result<LogFollower> {
        let mut f = LogFollower {
            path: path.to_path_buf(),
            file: None,
            offset: 0,
            pending: Vec::new(),
            poll: Duration::from_millis(100),
        };
        if !from_start {
            f.offset = match std::fs::metadata(path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                Err(e) => return Err(e),
            };
        }
        Ok(f)
    }

    fn fill(&mut self) -> io::Result<bool> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(mut f) => {
                    f.seek(SeekFrom::Start(self.offset))?;
                    self.file = Some(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(false);
        };
        let mut buf = [0u8; 16384];
        let n = file.read(&mut buf)?;
        self.offset += n as u64;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    }

    /// The next complete line if one is there now.
    pub fn try_next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Ok(Some(
                    String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
                ));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Waits for the next complete line.
    pub async fn next_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(l) = self.try_next_line()? {
                return Ok(l);
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Takes what was written after the last newline (useful once the container exited).
    pub fn take_partial(&mut self) -> io::Result<Option<String>> {
        while self.fill()? {}
        if self.pending.is_empty() {
            return Ok(None);
        }
        let rest = std::mem::take(&mut self.pending);
        Ok(Some(String::from_utf8_lossy(&rest).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn follower_sees_lines_as_they_come() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut f = LogFollower::open(&p, true).unwrap();
        assert_eq!(f.try_next_line().unwrap(), None);
        let mut w = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        write!(w, "one\ntw").unwrap();
        assert_eq!(f.next_line().await.unwrap(), "one");
        assert_eq!(f.try_next_line().unwrap(), None);
        writeln!(w, "o").unwrap();
        write!(w, "three").unwrap();
        assert_eq!(f.next_line().await.unwrap(), "two");
        assert_eq!(f.take_partial().unwrap().as_deref(), Some("three"));
        assert_eq!(read_log(&p).unwrap(), ["one", "two", "three"]);
        assert_eq!(read_log_tail(&p, 1).unwrap(), ["three"]);
        let mut tail = LogFollower::open(&p, false).unwrap();
        writeln!(w, " four").unwrap();
        assert_eq!(tail.next_line().await.unwrap(), " four");
    }
}
