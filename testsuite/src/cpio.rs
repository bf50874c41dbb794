//! A writer (and, for checking, a reader) for the SVR4 "newc" cpio format, the
//! format Linux unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header — the magic `070701` and thirteen 8-digit
//! hex fields (inode, mode, uid, gid, nlink, mtime, file size, dev major/minor, rdev
//! major/minor, name size including the NUL, checksum) — then the NUL-terminated
//! name, padded so the data starts on a 4-byte boundary, then the data, padded to a
//! 4-byte boundary. The archive ends with an entry named `TRAILER!!!`.
//!
//! Because the kernel itself creates the files, an archive can carry device nodes
//! (mode `S_IFCHR` plus rdev) and root-owned files without root privileges here.
//! Names are stored without a leading `/`, as `cpio -H newc` writes them.

use std::fmt;

/// `S_IFMT` and the file types this writer emits.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// Why an entry cannot be written or an archive cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioError(pub String);

impl fmt::Display for CpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CpioError {}

fn err<T>(msg: impl Into<String>) -> Result<T, CpioError> {
    Err(CpioError(msg.into()))
}

/// Rounds `n` up to a multiple of 4.
fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A newc archive being built in memory (initramfs images are a few MiB).
#[derive(Debug)]
pub struct Writer {
    buf: Vec<u8>,
    next_ino: u32,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            buf: Vec::new(),
            // Inode 0 is avoided: some readers treat it as "no inode".
            next_ino: 1,
        }
    }

    /// A directory with permission bits `perm` (e.g. `0o755`).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file with permission bits `perm` and contents `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link to `target` (the link's data is the target path).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        if target.is_empty() || target.contains('\0') {
            return err(format!("{path}: bad symlink target {target:?}"));
        }
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node `major:minor` with permission bits `perm`.
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        // The trailer name is valid by construction.
        self.push(0, 0, 1, (0, 0), TRAILER, &[]);
        self.buf
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name == TRAILER {
            return err(format!("bad cpio entry name {path:?}"));
        }
        if u32::try_from(data.len()).is_err() {
            return err(format!(
                "{path}: {} bytes is too large for cpio newc",
                data.len()
            ));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.push(ino, mode, nlink, rdev, name, data);
        Ok(())
    }

    fn push(&mut self, ino: u32, mode: u32, nlink: u32, rdev: (u32, u32), name: &str, data: &[u8]) {
        let fields: [u32; 13] = [
            ino,
            mode,
            0, // uid: root
            0, // gid: root
            nlink,
            0, // mtime: fixed, so archives are reproducible
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1, // name size includes the NUL
            0,                     // check: unused in newc (only in crc)
        ];
        self.buf.extend_from_slice(MAGIC);
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len());
        self.buf.resize(n, 0);
    }
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub data: Vec<u8>,
}

impl Entry {
    /// The `S_IFMT` bits of the mode.
    pub fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// Parses a newc archive up to and excluding its trailer, checking the magic, the
/// 4-byte alignment of names and data, and that the trailer is present and followed
/// only by zero padding.
pub fn parse(archive: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    loop {
        if !pos.is_multiple_of(4) {
            return err(format!("entry at offset {pos} is not 4-byte aligned"));
        }
        let Some(hdr) = archive.get(pos..pos + HEADER_LEN) else {
            return err(format!("truncated header at offset {pos} (no TRAILER!!!)"));
        };
        if &hdr[..6] != MAGIC {
            return err(format!(
                "bad magic at offset {pos}: {:?}",
                String::from_utf8_lossy(&hdr[..6])
            ));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = &hdr[6 + i * 8..14 + i * 8];
            let txt = std::str::from_utf8(s)
                .map_err(|_| CpioError(format!("non-ASCII header field at offset {pos}")))?;
            *v = u32::from_str_radix(txt, 16)
                .map_err(|_| CpioError(format!("bad hex field {txt:?} at offset {pos}")))?;
        }
        let [ino, mode, uid, gid, nlink, _mtime, filesize, _dmaj, _dmin, rmaj, rmin, namesize, _check] =
            f;
        let name_start = pos + HEADER_LEN;
        let name_end = name_start + namesize as usize;
        let Some(name_raw) = archive.get(name_start..name_end) else {
            return err(format!("truncated name at offset {name_start}"));
        };
        let Some((&0, name_bytes)) = name_raw.split_last() else {
            return err(format!("name at offset {name_start} is not NUL-terminated"));
        };
        let name = String::from_utf8(name_bytes.to_vec())
            .map_err(|_| CpioError(format!("non-UTF-8 name at offset {name_start}")))?;
        let data_start = align4(name_end);
        let data_end = data_start + filesize as usize;
        let Some(data) = archive.get(data_start..data_end) else {
            return err(format!(
                "{name}: truncated data ({filesize} bytes at offset {data_start})"
            ));
        };
        if archive[name_end..data_start.min(archive.len())]
            .iter()
            .any(|&b| b != 0)
        {
            return err(format!("{name}: non-zero name padding"));
        }
        pos = align4(data_end);
        if name == TRAILER {
            if archive
                .get(data_end..)
                .is_some_and(|rest| rest.iter().any(|&b| b != 0))
            {
                return err("data after TRAILER!!!");
            }
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            ino,
            mode,
            uid,
            gid,
            nlink,
            rdev_major: rmaj,
            rdev_minor: rmin,
            data: data.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new();
        w.dir("/bin", 0o755).unwrap();
        w.dir("dev", 0o755).unwrap();
        w.file("/bin/busybox", 0o755, b"\x7fELF fake busybox")
            .unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.char_dev("/dev/null", 0o666, 1, 3).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("/empty", 0o644, b"").unwrap();
        w.finish()
    }

    #[test]
    fn headers_have_magic_and_alignment() {
        let a = sample();
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 4, 0);
        // Every header starts on a 4-byte boundary with the magic.
        let mut n = 0;
        let mut i = 0;
        while let Some(off) = a[i..].windows(6).position(|w| w == b"070701") {
            assert_eq!((i + off) % 4, 0, "header at {}", i + off);
            i += off + 6;
            n += 1;
        }
        assert_eq!(n, 9, "8 entries and the trailer");
    }

    #[test]
    fn parses_back_names_modes_sizes() {
        let e = parse(&sample()).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "bin/busybox",
                "bin/sh",
                "dev/console",
                "dev/null",
                "init",
                "empty"
            ]
        );
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!(e[0].nlink, 2);
        assert_eq!(e[2].kind(), S_IFREG);
        assert_eq!(e[2].mode & 0o7777, 0o755);
        assert_eq!(e[2].data, b"\x7fELF fake busybox");
        assert_eq!(e[3].kind(), S_IFLNK);
        assert_eq!(e[3].data, b"busybox");
        assert_eq!(e[4].mode, S_IFCHR | 0o600);
        assert_eq!((e[4].rdev_major, e[4].rdev_minor), (5, 1));
        assert_eq!((e[5].rdev_major, e[5].rdev_minor), (1, 3));
        assert_eq!(e[6].data, b"#!/bin/sh\necho hi\n");
        assert!(e[7].data.is_empty());
        assert!(e.iter().all(|e| e.uid == 0 && e.gid == 0));
        // Distinct, non-zero inodes.
        let mut inos: Vec<u32> = e.iter().map(|e| e.ino).collect();
        inos.sort_unstable();
        inos.dedup();
        assert_eq!(inos.len(), e.len());
        assert!(inos[0] > 0);
    }

    #[test]
    fn header_fields_are_exact() {
        let mut w = Writer::new();
        w.file("a", 0o644, b"xyz").unwrap();
        let a = w.finish();
        let hdr = std::str::from_utf8(&a[..HEADER_LEN]).unwrap();
        assert_eq!(
            hdr,
            "070701\
             00000001\
             000081a4\
             00000000\
             00000000\
             00000001\
             00000000\
             00000003\
             00000000\
             00000000\
             00000000\
             00000000\
             00000002\
             00000000"
        );
        // 110 + "a\0" = 112 (aligned), 3 data bytes padded to 4.
        assert_eq!(&a[110..112], b"a\0");
        assert_eq!(&a[112..116], b"xyz\0");
        assert_eq!(&a[116..122], b"070701");
        let trailer_name = &a[116 + HEADER_LEN..116 + HEADER_LEN + 11];
        assert_eq!(trailer_name, b"TRAILER!!!\0");
        assert_eq!(a.len(), align4(116 + HEADER_LEN + 11));
    }

    #[test]
    fn every_data_length_mod_4_round_trips() {
        for n in 0..9 {
            let mut w = Writer::new();
            let data: Vec<u8> = (0..n as u8).collect();
            let name = "x".repeat(n + 1);
            w.file(&name, 0o600, &data).unwrap();
            w.file("next", 0o600, b"1").unwrap();
            let e = parse(&w.finish()).unwrap();
            assert_eq!(e.len(), 2);
            assert_eq!(e[0].name, name);
            assert_eq!(e[0].data, data);
            assert_eq!(e[1].data, b"1");
        }
    }

    #[test]
    fn rejects_bad_names_and_archives() {
        let mut w = Writer::new();
        assert!(w.file("", 0o644, b"").is_err());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
        assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
        assert!(w.symlink("l", "").is_err());

        let a = sample();
        assert!(parse(&a[..a.len() - 120]).is_err(), "no trailer");
        let mut bad = a.clone();
        bad[0] = b'1';
        assert!(parse(&bad).is_err(), "bad magic");
        let mut junk = a.clone();
        junk.extend_from_slice(b"junk");
        assert!(parse(&junk).is_err(), "data after the trailer");
        let mut padded = a;
        padded.extend_from_slice(&[0; 512]);
        assert!(
            parse(&padded).is_ok(),
            "zero padding after the trailer is fine"
        );
    }
}
