//! QEMU's firmware configuration interface (fw_cfg), as found on PC machines.
//!
//! The guest (usually the firmware) selects an *item* by writing a 16-bit key to the
//! selector port and then reads the item's bytes, one at a time, from the data port, or
//! in bulk through the DMA interface.
//!
//! I/O layout (one [`BusDevice`] registered at [`FW_CFG_IO_BASE`], [`FW_CFG_IO_LEN`]
//! bytes long):
//!
//! ```text
//! 0x510  selector (16-bit write; resets the read offset)
//! 0x511  data (8-bit reads, sequential; past the end of the item reads 0)
//! 0x514  DMA address, high 32 bits, big endian
//! 0x518  DMA address, low 32 bits, big endian; writing it starts the transfer
//!        (an 8-byte big-endian write at 0x514 does both halves at once)
//! ```
//!
//! Reading the DMA ports returns the signature `"QEMU CFG"`, byte for byte.
//!
//! A DMA transfer is described by a `FWCfgDmaAccess` structure in guest memory
//! (`be32 control, be32 length, be64 address`). The device reads it, performs an
//! optional SELECT (key in the high 16 bits of `control`), then a READ (copy item bytes
//! to `address`, zero-filling past the end of the item) or a SKIP (advance the offset),
//! and writes the resulting `control` back: 0 on success, [`DMA_CTL_ERROR`] on failure.
//! Writes into items are refused (`WRITE` sets [`DMA_CTL_ERROR`]), and every guest
//! memory access is bounds-checked by [`GuestMemory`]: a bad address is an error status,
//! never a panic.
//!
//! Named files live at keys [`FW_CFG_FILE_FIRST`] and up, in insertion order (keys are
//! stable once handed out); the file directory ([`FW_CFG_FILE_DIR`]) lists them sorted by
//! name as QEMU does.

use std::collections::BTreeMap;
use std::sync::Arc;
use vireo_core::{BusDevice, GuestMemory};

/// Base of the fw_cfg I/O ports on a PC.
pub const FW_CFG_IO_BASE: u64 = 0x510;
/// Length of the I/O range (0x510..=0x51b: selector, data, DMA address).
pub const FW_CFG_IO_LEN: u64 = 0x0c;
/// Offset of the selector port.
pub const PORT_SELECTOR: u64 = 0;
/// Offset of the data port.
pub const PORT_DATA: u64 = 1;
/// Offset of the DMA address port (high half; low half at +4).
pub const PORT_DMA: u64 = 4;

/// `"QEMU"`: the signature item.
pub const FW_CFG_SIGNATURE: u16 = 0x00;
/// Feature bitmap ([`FW_CFG_VERSION`] | [`FW_CFG_VERSION_DMA`]).
pub const FW_CFG_ID: u16 = 0x01;
pub const FW_CFG_UUID: u16 = 0x02;
/// RAM size in bytes (u64 LE).
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
pub const FW_CFG_NOGRAPHIC: u16 = 0x04;
/// Number of boot CPUs (u16 LE).
pub const FW_CFG_NB_CPUS: u16 = 0x05;
pub const FW_CFG_MACHINE_ID: u16 = 0x06;
pub const FW_CFG_KERNEL_ADDR: u16 = 0x07;
pub const FW_CFG_KERNEL_SIZE: u16 = 0x08;
/// Legacy command-line address item.
pub const FW_CFG_KERNEL_CMDLINE: u16 = 0x09;
pub const FW_CFG_INITRD_ADDR: u16 = 0x0a;
pub const FW_CFG_INITRD_SIZE: u16 = 0x0b;
pub const FW_CFG_BOOT_DEVICE: u16 = 0x0c;
pub const FW_CFG_NUMA: u16 = 0x0d;
pub const FW_CFG_BOOT_MENU: u16 = 0x0e;
/// Maximum number of CPUs (u16 LE).
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
pub const FW_CFG_KERNEL_ENTRY: u16 = 0x10;
pub const FW_CFG_KERNEL_DATA: u16 = 0x11;
pub const FW_CFG_INITRD_DATA: u16 = 0x12;
pub const FW_CFG_CMDLINE_ADDR: u16 = 0x13;
pub const FW_CFG_CMDLINE_SIZE: u16 = 0x14;
pub const FW_CFG_CMDLINE_DATA: u16 = 0x15;
pub const FW_CFG_SETUP_ADDR: u16 = 0x16;
pub const FW_CFG_SETUP_SIZE: u16 = 0x17;
pub const FW_CFG_SETUP_DATA: u16 = 0x18;
/// The file directory.
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// Key of the first named file.
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// Selector bit asking for a write channel (ignored: vireo's items are read-only).
pub const FW_CFG_WRITE_CHANNEL: u16 = 0x4000;
/// Selector bit for architecture-specific items.
pub const FW_CFG_ARCH_LOCAL: u16 = 0x8000;
/// x86 arch-local items as QEMU numbers them.
pub const FW_CFG_ACPI_TABLES: u16 = FW_CFG_ARCH_LOCAL;
pub const FW_CFG_SMBIOS_ENTRIES: u16 = FW_CFG_ARCH_LOCAL + 1;
pub const FW_CFG_IRQ0_OVERRIDE: u16 = FW_CFG_ARCH_LOCAL + 2;
pub const FW_CFG_E820_TABLE: u16 = FW_CFG_ARCH_LOCAL + 3;
pub const FW_CFG_HPET: u16 = FW_CFG_ARCH_LOCAL + 4;

/// [`FW_CFG_ID`] bit: the traditional selector/data interface.
pub const FW_CFG_VERSION: u32 = 0x01;
/// [`FW_CFG_ID`] bit: the DMA interface.
pub const FW_CFG_VERSION_DMA: u32 = 0x02;

/// Longest file name, including the terminating NUL.
pub const FW_CFG_MAX_FILE_PATH: usize = 56;

/// DMA control bits.
pub const DMA_CTL_ERROR: u32 = 0x01;
pub const DMA_CTL_READ: u32 = 0x02;
pub const DMA_CTL_SKIP: u32 = 0x04;
pub const DMA_CTL_SELECT: u32 = 0x08;
pub const DMA_CTL_WRITE: u32 = 0x10;

/// What reading the DMA ports returns, byte for byte.
pub const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";

/// Size of a `FWCfgDmaAccess` descriptor.
const DMA_DESC_LEN: usize = 16;
/// Chunk used to zero-fill guest memory past the end of an item.
const ZERO_CHUNK: usize = 64 * 1024;

/// Errors when configuring fw_cfg items.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg file name {0:?} is longer than 55 bytes")]
    NameTooLong(String),
    #[error("fw_cfg file name is empty")]
    EmptyName,
    #[error("fw_cfg file {0:?} already exists")]
    DuplicateFile(String),
    #[error("fw_cfg has no free file slot")]
    NoFreeSlot,
    #[error("fw_cfg item is larger than 4 GiB")]
    TooLarge,
}

/// One named file.
#[derive(Debug, Clone)]
struct FileEntry {
    name: String,
    key: u16,
}

/// The fw_cfg device.
pub struct FwCfg {
    mem: Arc<GuestMemory>,
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<FileEntry>,
    /// Selected key (with the write-channel bit stripped), `None` if invalid.
    selected: Option<u16>,
    offset: usize,
    /// DMA address being assembled: high half written at 0x514.
    dma_high: u32,
}

impl FwCfg {
    /// A device with the signature, the feature bitmap and an empty file directory;
    /// DMA transfers go to `mem`.
    pub fn new(mem: Arc<GuestMemory>) -> FwCfg {
        let mut f = FwCfg {
            mem,
            items: BTreeMap::new(),
            files: Vec::new(),
            selected: None,
            offset: 0,
            dma_high: 0,
        };
        f.add_item(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        f.add_u32(FW_CFG_ID, FW_CFG_VERSION | FW_CFG_VERSION_DMA);
        f.rebuild_dir();
        f
    }

    /// Adds (or replaces) the item at `key`.
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) {
        let key = key & !FW_CFG_WRITE_CHANNEL;
        if self.items.insert(key, data).is_some() {
            log::debug!(target: "vireo::dev::fw_cfg", "item {key:#06x} replaced");
        }
    }

    /// Adds a little-endian u16 item.
    pub fn add_u16(&mut self, key: u16, v: u16) {
        self.add_item(key, v.to_le_bytes().to_vec());
    }

    /// Adds a little-endian u32 item.
    pub fn add_u32(&mut self, key: u16, v: u32) {
        self.add_item(key, v.to_le_bytes().to_vec());
    }

    /// Adds a little-endian u64 item.
    pub fn add_u64(&mut self, key: u16, v: u64) {
        self.add_item(key, v.to_le_bytes().to_vec());
    }

    /// Adds a named file and returns its key. Names are at most 55 bytes (the directory
    /// stores them NUL-terminated in 56) and unique.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() {
            return Err(FwCfgError::EmptyName);
        }
        if name.len() >= FW_CFG_MAX_FILE_PATH {
            return Err(FwCfgError::NameTooLong(name.to_string()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge);
        }
        if self.files.iter().any(|f| f.name == name) {
            return Err(FwCfgError::DuplicateFile(name.to_string()));
        }
        let key = u16::try_from(self.files.len())
            .ok()
            .and_then(|n| FW_CFG_FILE_FIRST.checked_add(n))
            .filter(|k| *k < FW_CFG_WRITE_CHANNEL)
            .ok_or(FwCfgError::NoFreeSlot)?;
        self.items.insert(key, data);
        self.files.push(FileEntry {
            name: name.to_string(),
            key,
        });
        self.rebuild_dir();
        log::debug!(target: "vireo::dev::fw_cfg", "file {name:?} at key {key:#06x}");
        Ok(key)
    }

    /// The key of the file called `name`.
    pub fn file_key(&self, name: &str) -> Option<u16> {
        self.files.iter().find(|f| f.name == name).map(|f| f.key)
    }

    /// The bytes of the item at `key`.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&key).map(Vec::as_slice)
    }

    /// Regenerates the directory item: BE u32 count, then `{be32 size, be16 select,
    /// u16 reserved, char name[56]}` per file, sorted by name.
    fn rebuild_dir(&mut self) {
        let mut files = self.files.clone();
        files.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let mut dir = Vec::with_capacity(4 + files.len() * 64);
        dir.extend_from_slice(&(files.len() as u32).to_be_bytes());
        for f in &files {
            let size = self.items.get(&f.key).map_or(0, Vec::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&f.key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut name = [0u8; FW_CFG_MAX_FILE_PATH];
            name[..f.name.len()].copy_from_slice(f.name.as_bytes());
            dir.extend_from_slice(&name);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }

    /// Selects `key` and rewinds to the item's first byte.
    fn select(&mut self, key: u16) {
        let key = key & !FW_CFG_WRITE_CHANNEL;
        self.offset = 0;
        self.selected = self.items.contains_key(&key).then_some(key);
        if self.selected.is_none() {
            log::trace!(target: "vireo::dev::fw_cfg", "select of unknown key {key:#06x}");
        }
    }

    /// The selected item's bytes (empty when nothing valid is selected).
    fn current(&self) -> &[u8] {
        self.selected
            .and_then(|k| self.items.get(&k))
            .map_or(&[], Vec::as_slice)
    }

    /// One byte from the data port.
    fn read_data_byte(&mut self) -> u8 {
        let b = self.current().get(self.offset).copied();
        match b {
            Some(b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }

    /// Runs the DMA descriptor at `desc_addr` and writes the resulting control word back.
    fn dma(&mut self, desc_addr: u64) {
        let mut desc = [0u8; DMA_DESC_LEN];
        if let Err(e) = self.mem.read(desc_addr, &mut desc) {
            log::warn!(target: "vireo::dev::fw_cfg", "DMA descriptor at {desc_addr:#x} unreadable: {e}");
            return;
        }
        let control = u32::from_be_bytes([desc[0], desc[1], desc[2], desc[3]]);
        let length = u32::from_be_bytes([desc[4], desc[5], desc[6], desc[7]]);
        let mut address = u64::from_be_bytes([
            desc[8], desc[9], desc[10], desc[11], desc[12], desc[13], desc[14], desc[15],
        ]);
        log::trace!(target: "vireo::dev::fw_cfg",
            "DMA control {control:#x} length {length:#x} address {address:#x}");

        if control & DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let (read, write, mut remaining) = if control & DMA_CTL_READ != 0 {
            (true, false, u64::from(length))
        } else if control & DMA_CTL_WRITE != 0 {
            (false, true, u64::from(length))
        } else if control & DMA_CTL_SKIP != 0 {
            (false, false, u64::from(length))
        } else {
            (false, false, 0)
        };

        let mut status = 0u32;
        if write && remaining > 0 {
            // vireo's items are read-only.
            log::debug!(target: "vireo::dev::fw_cfg", "DMA write refused");
            status |= DMA_CTL_ERROR;
            remaining = 0;
        }
        while remaining > 0 && status & DMA_CTL_ERROR == 0 {
            let data_len = self.current().len();
            if self.offset >= data_len {
                // Past the end of the item (or no item): reads give zeros.
                if read && self.zero_fill(address, remaining).is_err() {
                    status |= DMA_CTL_ERROR;
                }
                remaining = 0;
            } else {
                let avail = (data_len - self.offset) as u64;
                let len = remaining.min(avail) as usize;
                if read {
                    let chunk = &self.current()[self.offset..self.offset + len];
                    if let Err(e) = self.mem.write(address, chunk) {
                        log::debug!(target: "vireo::dev::fw_cfg", "DMA read into {address:#x}: {e}");
                        status |= DMA_CTL_ERROR;
                        break;
                    }
                }
                self.offset += len;
                address = address.wrapping_add(len as u64);
                remaining -= len as u64;
            }
        }
        if let Err(e) = self.mem.write(desc_addr, &status.to_be_bytes()) {
            log::warn!(target: "vireo::dev::fw_cfg", "DMA status write to {desc_addr:#x}: {e}");
        }
    }

    /// Writes `len` zero bytes at `gpa`, refusing the whole range if any of it is not
    /// guest memory.
    fn zero_fill(&self, gpa: u64, len: u64) -> Result<(), ()> {
        if self.mem.region_of(gpa, len).is_none() {
            log::debug!(target: "vireo::dev::fw_cfg", "DMA zero fill {gpa:#x}+{len:#x} out of range");
            return Err(());
        }
        let zeros = [0u8; ZERO_CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64) as usize;
            self.mem.write(gpa + done, &zeros[..n]).map_err(|_| ())?;
            done += n as u64;
        }
        Ok(())
    }
}

impl BusDevice for FwCfg {
    fn name(&self) -> &str {
        "fw_cfg"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            // Byte reads at either of the first two ports read the data port, as in
            // QEMU's combined I/O region.
            PORT_SELECTOR | PORT_DATA if data.len() == 1 => data[0] = self.read_data_byte(),
            PORT_DMA..=0x0b => {
                for (i, b) in data.iter_mut().enumerate() {
                    let idx = (offset - PORT_DMA) as usize + i;
                    *b = DMA_SIGNATURE.get(idx).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (PORT_SELECTOR, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (PORT_DATA, 1) => {
                log::debug!(target: "vireo::dev::fw_cfg", "data port write ignored");
            }
            (PORT_DMA, 4) => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            }
            (PORT_DMA, 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                self.dma_high = 0;
                self.dma(u64::from_be_bytes(b));
            }
            (0x08, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = (u64::from(self.dma_high) << 32) | u64::from(low);
                self.dma_high = 0;
                self.dma(addr);
            }
            _ => {
                log::debug!(target: "vireo::dev::fw_cfg",
                    "unsupported write at +{offset:#x} size {}", data.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (Arc<GuestMemory>, FwCfg) {
        let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
        let f = FwCfg::new(mem.clone());
        (mem, f)
    }

    fn select(f: &mut FwCfg, key: u16) {
        f.write(PORT_SELECTOR, &key.to_le_bytes());
    }

    fn read_bytes(f: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                f.read(PORT_DATA, &mut b);
                b[0]
            })
            .collect()
    }

    /// Writes a descriptor at `desc` and kicks the DMA through the two 32-bit ports.
    fn dma(mem: &GuestMemory, f: &mut FwCfg, desc: u64, control: u32, len: u32, addr: u64) {
        let mut d = Vec::new();
        d.extend_from_slice(&control.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&addr.to_be_bytes());
        mem.write(desc, &d).unwrap();
        f.write(PORT_DMA, &((desc >> 32) as u32).to_be_bytes());
        f.write(PORT_DMA + 4, &(desc as u32).to_be_bytes());
    }

    fn status(mem: &GuestMemory, desc: u64) -> u32 {
        let mut b = [0u8; 4];
        mem.read(desc, &mut b).unwrap();
        u32::from_be_bytes(b)
    }

    #[test]
    fn signature_and_id() {
        let (_, mut f) = dev();
        select(&mut f, FW_CFG_SIGNATURE);
        assert_eq!(read_bytes(&mut f, 4), b"QEMU");
        select(&mut f, FW_CFG_ID);
        assert_eq!(read_bytes(&mut f, 4), [3, 0, 0, 0]);
        // DMA signature, as 4-byte halves and as single bytes.
        let mut w = [0u8; 4];
        f.read(PORT_DMA, &mut w);
        assert_eq!(&w, b"QEMU");
        f.read(PORT_DMA + 4, &mut w);
        assert_eq!(&w, b" CFG");
        let mut q = [0u8; 8];
        f.read(PORT_DMA, &mut q);
        assert_eq!(q, DMA_SIGNATURE);
    }

    #[test]
    fn sequential_reads_and_past_end() {
        let (_, mut f) = dev();
        f.add_u64(FW_CFG_RAM_SIZE, 0x1122_3344_5566_7788);
        select(&mut f, FW_CFG_RAM_SIZE);
        assert_eq!(read_bytes(&mut f, 3), [0x88, 0x77, 0x66]);
        assert_eq!(read_bytes(&mut f, 7), [0x55, 0x44, 0x33, 0x22, 0x11, 0, 0]);
        // Reselecting rewinds.
        select(&mut f, FW_CFG_RAM_SIZE);
        assert_eq!(read_bytes(&mut f, 1), [0x88]);
        // Unknown keys read as zeros; the write-channel bit is ignored.
        select(&mut f, 0x1234);
        assert_eq!(read_bytes(&mut f, 2), [0, 0]);
        select(&mut f, FW_CFG_RAM_SIZE | FW_CFG_WRITE_CHANNEL);
        assert_eq!(read_bytes(&mut f, 1), [0x88]);
    }

    #[test]
    fn file_directory_sorted_by_name() {
        let (_, mut f) = dev();
        let k1 = f.add_file("etc/zeta", vec![1, 2, 3]).unwrap();
        let k2 = f.add_file("bootorder", vec![9; 10]).unwrap();
        assert_eq!((k1, k2), (0x20, 0x21));
        assert_eq!(f.file_key("bootorder"), Some(0x21));
        assert_eq!(
            f.add_file("bootorder", vec![]),
            Err(FwCfgError::DuplicateFile("bootorder".into()))
        );
        let long = "x".repeat(56);
        assert!(matches!(
            f.add_file(&long, vec![]),
            Err(FwCfgError::NameTooLong(_))
        ));
        assert!(f.add_file(&"y".repeat(55), vec![]).is_ok());

        select(&mut f, FW_CFG_FILE_DIR);
        let dir = read_bytes(&mut f, 4 + 3 * 64);
        assert_eq!(&dir[..4], &[0, 0, 0, 3]);
        let entry = |i: usize| &dir[4 + i * 64..4 + (i + 1) * 64];
        // "bootorder" < "etc/zeta" < "yyy..."
        assert_eq!(&entry(0)[..8], &[0, 0, 0, 10, 0, 0x21, 0, 0]);
        assert_eq!(&entry(0)[8..18], b"bootorder\0");
        assert_eq!(&entry(1)[..8], &[0, 0, 0, 3, 0, 0x20, 0, 0]);
        assert_eq!(&entry(1)[8..17], b"etc/zeta\0");
        assert_eq!(entry(2)[8 + 55], 0);

        select(&mut f, 0x20);
        assert_eq!(read_bytes(&mut f, 4), [1, 2, 3, 0]);
    }

    #[test]
    fn dma_select_read_skip() {
        let (mem, mut f) = dev();
        f.add_file("etc/test", (0u8..100).collect()).unwrap();
        let desc = 0x1000;
        // SELECT + READ of 10 bytes.
        dma(
            &mem,
            &mut f,
            desc,
            (0x20 << 16) | DMA_CTL_SELECT | DMA_CTL_READ,
            10,
            0x2000,
        );
        assert_eq!(status(&mem, desc), 0);
        let mut b = [0u8; 10];
        mem.read(0x2000, &mut b).unwrap();
        assert_eq!(b, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // SKIP 20, then READ continues at 30.
        dma(&mem, &mut f, desc, DMA_CTL_SKIP, 20, 0);
        assert_eq!(status(&mem, desc), 0);
        dma(&mem, &mut f, desc, DMA_CTL_READ, 2, 0x3000);
        assert_eq!(mem.read_u16(0x3000).unwrap(), u16::from_le_bytes([30, 31]));
        // The data port continues where DMA left off.
        assert_eq!(read_bytes(&mut f, 1), [32]);
        // An 8-byte big-endian write of the address also starts a transfer.
        let mut d = Vec::new();
        d.extend_from_slice(&(DMA_CTL_SELECT | DMA_CTL_READ).to_be_bytes()); // key 0
        d.extend_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(&0x4000u64.to_be_bytes());
        mem.write(0x1800, &d).unwrap();
        f.write(PORT_DMA, &0x1800u64.to_be_bytes());
        assert_eq!(status(&mem, 0x1800), 0);
        assert_eq!(mem.read_u32(0x4000).unwrap(), u32::from_le_bytes(*b"QEMU"));
    }

    #[test]
    fn dma_oversized_length_zero_fills() {
        let (mem, mut f) = dev();
        f.add_item(FW_CFG_NB_CPUS, vec![2, 0]);
        mem.write(0x5000, &[0xaa; 16]).unwrap();
        dma(
            &mem,
            &mut f,
            0x1000,
            (5 << 16) | DMA_CTL_SELECT | DMA_CTL_READ,
            8,
            0x5000,
        );
        assert_eq!(status(&mem, 0x1000), 0);
        let mut b = [0u8; 10];
        mem.read(0x5000, &mut b).unwrap();
        assert_eq!(b, [2, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xaa]);
    }

    #[test]
    fn dma_bad_addresses_set_error() {
        let (mem, mut f) = dev();
        // Destination in the VGA hole.
        dma(
            &mem,
            &mut f,
            0x1000,
            DMA_CTL_SELECT | DMA_CTL_READ,
            4,
            0xA_0000,
        );
        assert_eq!(status(&mem, 0x1000), DMA_CTL_ERROR);
        // Destination past the end of RAM, with a huge zero-fill length.
        dma(
            &mem,
            &mut f,
            0x1000,
            DMA_CTL_SELECT | DMA_CTL_READ,
            u32::MAX,
            0xfff0,
        );
        assert_eq!(status(&mem, 0x1000), DMA_CTL_ERROR);
        dma(
            &mem,
            &mut f,
            0x1000,
            DMA_CTL_SELECT | DMA_CTL_READ,
            4,
            u64::MAX - 1,
        );
        assert_eq!(status(&mem, 0x1000), DMA_CTL_ERROR);
        // Writes are refused.
        dma(
            &mem,
            &mut f,
            0x1000,
            DMA_CTL_SELECT | DMA_CTL_WRITE,
            4,
            0x2000,
        );
        assert_eq!(status(&mem, 0x1000), DMA_CTL_ERROR);
        // A descriptor outside guest memory is ignored without panicking.
        f.write(PORT_DMA, &0xffff_ffff_0000_0000u64.to_be_bytes());
        f.write(PORT_DMA + 4, &0xA_0000u32.to_be_bytes());
        // No operation bits: nothing happens, success.
        dma(&mem, &mut f, 0x1000, 0, 4, 0);
        assert_eq!(status(&mem, 0x1000), 0);
    }
}
