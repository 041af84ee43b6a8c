//! command_status values (SMPP v3.4 section 5.1.3). Filled in by the codec owner.
pub const ESME_ROK: u32 = 0x0000_0000;
pub const ESME_RINVMSGLEN: u32 = 0x0000_0001;
pub const ESME_RINVCMDLEN: u32 = 0x0000_0002;
pub const ESME_RINVCMDID: u32 = 0x0000_0003;
pub const ESME_RINVBNDSTS: u32 = 0x0000_0004;
pub const ESME_RALYBND: u32 = 0x0000_0005;
pub const ESME_RSYSERR: u32 = 0x0000_0008;
pub const ESME_RBINDFAIL: u32 = 0x0000_000D;
pub const ESME_RINVPASWD: u32 = 0x0000_000E;
pub const ESME_RINVSYSID: u32 = 0x0000_000F;
pub const ESME_RMSGQFUL: u32 = 0x0000_0014;
pub const ESME_RTHROTTLED: u32 = 0x0000_0058;
