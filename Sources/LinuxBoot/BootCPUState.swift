/// A segment register as the 64-bit boot protocol wants it loaded; the VMM
/// converts it to its accelerator's form.
public struct BootSegment: Sendable, Equatable {
    public var selector: UInt16
    public var base: UInt64 = 0
    public var limit: UInt32 = 0xffff_ffff
    public var type: UInt8
    public var present = true
    public var dpl: UInt8 = 0
    /// Default operand size 32 (the D/B bit); clear for 64-bit code.
    public var db: Bool
    /// The descriptor is a code or data segment, not a system one.
    public var s = true
    /// 64-bit code.
    public var l: Bool
    public var g = true

    /// The GDT descriptor this segment is loaded from.
    public var descriptor: UInt64 {
        let limit = UInt64(g ? self.limit >> 12 : self.limit)
        let access = UInt64(type) | (s ? 0x10 : 0) | UInt64(dpl & 3) << 5 | (present ? 0x80 : 0)
        let flags = (l ? 0x2 : 0) | (db ? 0x4 : 0) | (g ? 0x8 : 0) as UInt64
        return (limit & 0xffff) | (base & 0xff_ffff) << 16 | access << 40
            | (limit >> 16 & 0xf) << 48 | flags << 52 | (base >> 24 & 0xff) << 56
    }
}

/// The vCPU state in which the 64-bit boot protocol enters the kernel
/// (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): long mode
/// with paging on an identity map, flat segments from a GDT with
/// __BOOT_CS 0x10 and __BOOT_DS 0x18, interrupts off, RSI the zero page.
public struct BootCPUState: Sendable, Equatable {
    public var rip: UInt64
    public var rsi: UInt64
    public var rsp: UInt64
    public var rflags: UInt64 = 0x2
    public var cr0: UInt64
    public var cr3: UInt64
    public var cr4: UInt64
    public var efer: UInt64
    public var code: BootSegment
    /// Loaded into DS, ES, FS, GS and SS.
    public var data: BootSegment
    public var taskRegister: BootSegment
    public var gdtBase: UInt64
    public var gdtLimit: UInt16
    public var idtBase: UInt64 = 0
    public var idtLimit: UInt16 = 0

    public static let cr0ProtectionEnable: UInt64 = 1 << 0
    public static let cr0ExtensionType: UInt64 = 1 << 4
    public static let cr0NumericError: UInt64 = 1 << 5
    public static let cr0Paging: UInt64 = 1 << 31
    public static let cr4PAE: UInt64 = 1 << 5
    public static let eferLME: UInt64 = 1 << 8
    public static let eferLMA: UInt64 = 1 << 10
}

/// The GDT and identity page tables the boot state points at, written to
/// low memory below the EBDA.
public struct BootPageTables: Sendable {
    public static let gdtAddress: UInt64 = 0x500
    public static let stackTop: UInt64 = 0x8ff0
    public static let pml4Address: UInt64 = 0x9000
    public static let pdptAddress: UInt64 = 0xa000
    /// Four page directories of 2 MiB pages: the whole 32-bit space
    /// identity-mapped, which covers all low RAM and the device window.
    public static let pageDirectoryAddress: UInt64 = 0xb000
    public static let mappedGiB = 4

    public static let codeSelector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let taskSelector: UInt16 = 0x20

    static let code = BootSegment(selector: codeSelector, type: 0xb, db: false, l: true)
    static let data = BootSegment(selector: dataSelector, type: 0x3, db: true, l: false)
    /// KVM on VMX wants a usable busy TSS in TR even though nothing switches tasks.
    static let task = BootSegment(selector: taskSelector, limit: 0x67, type: 0xb, db: false, s: false, l: false, g: false)

    /// Null, unused, code 0x10, data 0x18, then a 16-byte TSS descriptor at 0x20.
    public static var gdt: [UInt64] { [0, 0, code.descriptor, data.descriptor, task.descriptor, 0] }

    /// Writes the GDT and the page tables, and returns the state that enters
    /// the kernel at `entryPoint` with `zeroPage` in RSI.
    public static func write(into memory: some GuestPhysicalMemory, entryPoint: UInt64, zeroPage: UInt64) throws(LinuxBootError) -> BootCPUState {
        var gdtBytes = [UInt8](repeating: 0, count: gdt.count * 8)
        for (index, entry) in gdt.enumerated() { gdtBytes.setLE(entry, at: index * 8) }
        try memory.put(gdtBytes, at: gdtAddress)

        let present: UInt64 = 0x1, writable: UInt64 = 0x2, large: UInt64 = 0x80
        var pml4 = [UInt8](repeating: 0, count: 4096)
        pml4.setLE(pdptAddress | present | writable, at: 0)
        try memory.put(pml4, at: pml4Address)
        var pdpt = [UInt8](repeating: 0, count: 4096)
        var directories = [UInt8](repeating: 0, count: 4096 * mappedGiB)
        for gib in 0..<mappedGiB {
            pdpt.setLE((pageDirectoryAddress + UInt64(gib) * 4096) | present | writable, at: gib * 8)
            for entry in 0..<512 {
                let address = UInt64(gib) << 30 | UInt64(entry) << 21
                directories.setLE(address | present | writable | large, at: (gib * 512 + entry) * 8)
            }
        }
        try memory.put(pdpt, at: pdptAddress)
        try memory.put(directories, at: pageDirectoryAddress)

        return BootCPUState(
            rip: entryPoint, rsi: zeroPage, rsp: stackTop,
            cr0: BootCPUState.cr0ProtectionEnable | BootCPUState.cr0ExtensionType
                | BootCPUState.cr0NumericError | BootCPUState.cr0Paging,
            cr3: pml4Address, cr4: BootCPUState.cr4PAE,
            efer: BootCPUState.eferLME | BootCPUState.eferLMA,
            code: code, data: data, taskRegister: task,
            gdtBase: gdtAddress, gdtLimit: UInt16(gdt.count * 8 - 1))
    }
}
