import Foundation
@testable import X86
import X86OracleSupport

/// The three set-ups unicorn can start in.
enum CodeMode: String, CaseIterable, Sendable, CustomStringConvertible {
    case real, protected32, long64
    var description: String { rawValue }
    /// The code's default operand and address size in bytes.
    var codeSize: Int { self == .real ? 2 : self == .protected32 ? 4 : 8 }
    var unicornMode: Unicorn.Mode { self == .real ? .real16 : self == .protected32 ? .protected32 : .long64 }
    var registerCount: Int { self == .long64 ? 16 : 8 }
    /// XMM registers compared: none in real mode, where unicorn 2.0.1 runs
    /// no SSE (its 16-bit set-up leaves CR4.OSFXSR clear for good).
    var xmmCount: Int { self == .long64 ? 16 : self == .protected32 ? 8 : 0 }
}

/// Where things are in the 64 KiB both CPUs see. Each segment register has
/// its own data page, so that a memory operand lands in the page of the
/// segment it goes through (real mode: the segment's base is its page).
enum Layout {
    static let memorySize = 0x10000
    static let gdt: UInt64 = 0x0
    static let codeStart: UInt64 = 0x1000
    static let codeEnd: UInt64 = 0x5000
    /// ES CS SS DS FS GS.
    static let pages: [UInt64] = [0x8000, 0x7000, 0x9000, 0x7000, 0x6000, 0x5000]
    static let stackPage: UInt64 = 0x9000
    /// X86's long-mode page tables, in a range of their own past RAM, so
    /// that the A/D bits the walk sets are not in the compared memory.
    static let pageTables: UInt64 = 0x4000_0000

    // GDT selectors.
    static let code32: UInt16 = 0x08, data: UInt16 = 0x10, code64: UInt16 = 0x18
    static let dataFS: UInt16 = 0x20, dataGS: UInt16 = 0x28, notPresent: UInt16 = 0x30
    static let dataDPL3: UInt16 = 0x38, readOnly: UInt16 = 0x40, executeOnly: UInt16 = 0x48, code16: UInt16 = 0x50
    /// Descriptors, accessed bit set (so that a load writes nothing).
    static let descriptors: [UInt64] = [
        0,
        0x00CF_9B00_0000_FFFF,  // 08 code, 32-bit
        0x00CF_9300_0000_FFFF,  // 10 data
        0x00AF_9B00_0000_FFFF,  // 18 code, 64-bit
        0x00CF_9300_6000_FFFF,  // 20 data, base 0x6000
        0x00CF_9300_5000_FFFF,  // 28 data, base 0x5000
        0x00CF_1300_0000_FFFF,  // 30 data, not present
        0x00CF_F300_0000_FFFF,  // 38 data, DPL 3
        0x00CF_9100_0000_FFFF,  // 40 data, read-only
        0x00CF_9900_0000_FFFF,  // 48 code, execute-only
        0x000F_9B00_0000_FFFF,  // 50 code, 16-bit
    ]
    static var gdtLimit: UInt16 { UInt16(descriptors.count * 8 - 1) }

    /// The segment registers each mode starts with (and returns to before
    /// each instruction): selector, base, attributes.
    static func segments(_ mode: CodeMode) -> [SegmentRegister] {
        switch mode {
        case .real:
            return (0..<6).map { index in
                index == 1 ? .realMode(selector: 0, code: true) : .realMode(selector: UInt16(pages[index] >> 4))
            }
        case .protected32, .long64:
            let code = mode == .long64
                ? SegmentRegister(selector: code64, base: 0, limit: 0xFFFF_FFFF, attributes: 0xA09B)
                : SegmentRegister(selector: code32, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC09B)
            let flat = SegmentRegister(selector: data, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC093)
            return [flat, code, flat, flat,
                    SegmentRegister(selector: dataFS, base: 0x6000, limit: 0xFFFF_FFFF, attributes: 0xC093),
                    SegmentRegister(selector: dataGS, base: 0x5000, limit: 0xFFFF_FFFF, attributes: 0xC093)]
        }
    }
}

/// What both CPUs are compared on after an instruction.
struct Snapshot: Equatable {
    var gpr: [UInt64]
    var rip: UInt64
    var rflags: UInt64
    var selectors: [UInt16]
    var xmm: [UInt128]
    var mxcsr: UInt32
}

/// How an instruction ended, in terms both CPUs share.
enum Outcome: Equatable, CustomStringConvertible {
    case completed
    case exception(UInt32)
    /// An access outside the 64 KiB (X86: MMIO exit or page fault past the
    /// identity map; unicorn: an unmapped access).
    case outsideMemory
    case other(String)

    var description: String {
        switch self {
        case .completed: return "completed"
        case .exception(let vector): return "exception \(vector)"
        case .outsideMemory: return "access outside memory"
        case .other(let text): return text
        }
    }
}

/// X86 and unicorn over identical memories, stepped one instruction at a
/// time from the same state.
final class PairedMachine {
    let mode: CodeMode
    let x86Memory = GuardedMemory(size: Layout.memorySize)
    let unicornMemory = GuardedMemory(size: Layout.memorySize)
    let tables = GuardedMemory(size: 0x3000)
    var cpu: X86CPU
    let unicorn: Unicorn
    var rng: SplitMix64
    /// Where the next instruction goes: each one gets fresh bytes, since
    /// unicorn does not notice code rewritten behind its translations.
    var cursor = Layout.codeStart
    /// Instructions each known unicorn deviation applied to.
    var deviationHits: [String: Int] = [:]

    init(mode: CodeMode, seed: UInt64) throws {
        self.mode = mode
        rng = SplitMix64(state: seed)
        // Random data everywhere but the GDT and the code.
        for offset in stride(from: 0, to: Layout.memorySize, by: 8) {
            x86Memory.store(rng.next(), at: offset)
        }
        for (index, descriptor) in Layout.descriptors.enumerated() {
            x86Memory.store(descriptor, at: Int(Layout.gdt) + index * 8)
        }
        x86Memory.write([UInt8](repeating: 0xCC, count: Int(Layout.codeEnd - Layout.codeStart)), at: Int(Layout.codeStart))
        unicornMemory.copy(from: x86Memory)

        var state = CPUState()
        state.rip = Layout.codeStart
        state.rflags = 0x2
        let segments = Layout.segments(mode)
        for (index, segment) in segments.enumerated() { state[segmentIndex: index] = segment }
        var ranges = [PhysicalRange(guestAddress: 0, size: UInt64(Layout.memorySize), host: x86Memory.base)]
        if mode != .real {
            state.cr0 |= ControlBits.cr0PE
            state.gdtr = DescriptorTableRegister(base: Layout.gdt, limit: Layout.gdtLimit)
            // No LDT, as unicorn starts (the reset state's LDTR is usable).
            state.ldtr = SegmentRegister(selector: 0, base: 0, limit: 0, attributes: 0)
            // SSE on, as unicorn's 32- and 64-bit set-ups have it (without
            // unmasked SIMD exceptions, which unicorn does not raise).
            state.cr4 |= ControlBits.cr4OSFXSR | ControlBits.cr4OSXMMEXCPT
        }
        state.fpu.mxcsr = FloatingPointState.defaultMXCSR
        if mode == .long64 {
            // PML4[0] -> PDPT -> PD; PD[0] maps the first 2 MiB with one large page
            // (a 1 GiB page needs CPUID.80000001H:EDX.Page1GB, which X86 leaves clear).
            tables.store(Layout.pageTables + 0x1000 | 0x7, at: 0)
            tables.store(Layout.pageTables + 0x2000 | 0x7, at: 0x1000)
            tables.store(UInt64(0x87), at: 0x2000)
            ranges.append(PhysicalRange(guestAddress: Layout.pageTables, size: 0x3000, host: tables.base))
            state.cr3 = Layout.pageTables
            state.cr4 |= ControlBits.cr4PAE
            state.efer = ControlBits.eferLME | ControlBits.eferLMA
            state.cr0 |= ControlBits.cr0PG
        }
        cpu = X86CPU(memory: PhysicalMemory(ranges: ranges), state: state)

        unicorn = try Unicorn(mode: mode.unicornMode, memory: unicornMemory.base, size: Layout.memorySize)
        if mode != .real {
            try unicorn.writeTable(.gdtr, base: Layout.gdt, limit: UInt32(Layout.gdtLimit))
        }
        try loadUnicornSegments()
        try unicorn.write(mode == .long64 ? .rflags : .eflags, 0x2)
        if mode.xmmCount > 0 {
            // unicorn starts with MXCSR 0 (every exception unmasked).
            try unicorn.write(.mxcsr, UInt64(FloatingPointState.defaultMXCSR))
            for index in 0..<mode.xmmCount {
                let value = UInt128(rng.next()) << 64 | UInt128(rng.next())
                cpu.state.fpu.setXMM(index, value)
                try unicorn.writeXMM(UnicornRegister.xmm[index], value)
            }
        }
        try unicorn.saveCleanState()
    }

    // MARK: State

    func loadUnicornSegments() throws {
        for (index, segment) in cpu.state.segments.enumerated() {
            try unicorn.write(UnicornRegister.segments[index], UInt64(segment.selector))
        }
    }

    func gprRegister(_ index: Int) -> UnicornRegister {
        mode == .long64 ? UnicornRegister.gpr64[index] : UnicornRegister.gpr32[index]
    }

    func setRegister(_ index: Int, _ value: UInt64) throws {
        cpu.state.gpr[index] = value
        try unicorn.write(gprRegister(index), value)
    }

    /// Sets RFLAGS on both (X86's lazy flags become explicit).
    func setFlags(_ value: UInt64) throws {
        cpu.state.rflags = value
        try unicorn.write(mode == .long64 ? .rflags : .eflags, cpu.state.rflags)
    }

    func writeMemory(_ bytes: [UInt8], at address: UInt64) {
        x86Memory.write(bytes, at: Int(address))
        unicornMemory.write(bytes, at: Int(address))
    }

    /// Puts the segment registers back to the mode's set-up if an
    /// instruction changed one.
    func restoreSegments() throws {
        guard cpu.state.segments != Layout.segments(mode) else { return }
        try resetSegments()
    }

    /// Sets the segment registers of both CPUs to the mode's set-up.
    func resetSegments() throws {
        for (index, segment) in Layout.segments(mode).enumerated() { cpu.state[segmentIndex: index] = segment }
        if mode == .long64 {
            // A segment register written in 64-bit mode keeps its old base
            // in unicorn 2.0.1, and unicorn applies the base of ES, SS or DS
            // when the instruction names it in a prefix (the SDM: those
            // prefixes are ignored). The saved context has the set-up's bases.
            try unicorn.recover()
            for index in 0..<mode.registerCount { try unicorn.write(gprRegister(index), cpu.state.gpr[index]) }
            try unicorn.write(.rflags, cpu.state.rflags)
            try synchronizeSIMD()
        } else {
            try loadUnicornSegments()
        }
    }

    var x86Snapshot: Snapshot {
        let count = mode.registerCount
        let mask: UInt64 = mode == .long64 ? ~0 : 0xFFFF_FFFF
        var fpu = cpu.state.fpu
        return Snapshot(gpr: (0..<count).map { cpu.state.gpr[$0] & mask }, rip: cpu.state.rip,
                        rflags: cpu.state.rflags, selectors: cpu.state.segments.map(\.selector),
                        xmm: (0..<mode.xmmCount).map { fpu.xmm($0) }, mxcsr: mode.xmmCount > 0 ? fpu.mxcsr : 0)
    }

    var unicornSnapshot: Snapshot {
        let count = mode.registerCount
        let mask: UInt64 = mode == .long64 ? ~0 : 0xFFFF_FFFF
        return Snapshot(gpr: (0..<count).map { unicorn.read(gprRegister($0)) & mask },
                        rip: unicorn.read(mode == .long64 ? .rip : .eip),
                        rflags: unicorn.read(mode == .long64 ? .rflags : .eflags),
                        selectors: UnicornRegister.segments.map { UInt16(truncatingIfNeeded: unicorn.read($0)) },
                        xmm: (0..<mode.xmmCount).map { unicorn.readXMM(UnicornRegister.xmm[$0]) },
                        mxcsr: mode.xmmCount > 0 ? UInt32(truncatingIfNeeded: unicorn.read(.mxcsr)) : 0)
    }

    /// Makes unicorn's state X86's: after a difference, so that one bug is
    /// reported once, not in every instruction after it. The segment
    /// registers go back to the set-up on both (X86 may hold a selector that
    /// unicorn rightly refuses to load).
    func resynchronize() throws {
        try resetSegments()
        for index in 0..<mode.registerCount { try unicorn.write(gprRegister(index), cpu.state.gpr[index]) }
        try unicorn.write(mode == .long64 ? .rflags : .eflags, cpu.state.rflags)
        try synchronizeSIMD()
        unicornMemory.copy(from: x86Memory)
    }

    /// unicorn's XMM registers and MXCSR become X86's.
    func synchronizeSIMD() throws {
        guard mode.xmmCount > 0 else { return }
        try unicorn.write(.mxcsr, UInt64(cpu.state.fpu.mxcsr))
        for index in 0..<mode.xmmCount { try unicorn.writeXMM(UnicornRegister.xmm[index], cpu.state.fpu.xmm(index)) }
    }

    func setXMM(_ index: Int, _ value: UInt128) throws {
        cpu.state.fpu.setXMM(index, value)
        try unicorn.writeXMM(UnicornRegister.xmm[index], value)
    }

    func setMXCSR(_ value: UInt32) throws {
        cpu.state.fpu.mxcsr = value
        try unicorn.write(.mxcsr, UInt64(value))
    }

    // MARK: Stepping

    /// Makes room for an instruction of up to 16 bytes; when the code area
    /// is used up, starts over with fresh translations on both sides.
    func reserveCode() throws -> UInt64 {
        if cursor + 16 > Layout.codeEnd {
            cursor = Layout.codeStart
            try unicorn.flushTranslations()
            // A fresh X86CPU drops anything decoded from the old bytes; the
            // state (lazy flags included) carries over.
            var fresh = X86CPU(memory: cpu.memory, state: cpu.state)
            fresh.deliversExceptions = false
            cpu = fresh
        }
        return cursor
    }

    /// Runs `bytes` at `address` on X86, and `unicornBytes` (the same
    /// instruction, or an encoding of the same meaning that unicorn gets
    /// right) on unicorn.
    func step(_ bytes: [UInt8], unicornBytes: [UInt8], at address: UInt64, branch: Bool) -> (x86: Outcome, unicorn: Outcome) {
        writeMemory(bytes, at: address)
        cursor = address + UInt64(max(bytes.count, unicornBytes.count)) + UInt64(rng.below(3))
        cpu.state.rip = address
        let x86: Outcome
        switch cpu.step() {
        case .instructionLimit: x86 = .completed
        case .exception(let vector, _) where vector == Vector.pf.rawValue && mode == .long64
            && cpu.state.cr2 >= UInt64(Layout.memorySize):
            x86 = .outsideMemory
        case .exception(let vector, _): x86 = .exception(UInt32(vector))
        case .mmio: x86 = .outsideMemory
        case let other: x86 = .other("X86 exit \(other)")
        }
        if unicornBytes != bytes { unicornMemory.write(unicornBytes, at: Int(address)) }
        defer {
            if unicornBytes != bytes {
                let count = max(bytes.count, unicornBytes.count)
                unicornMemory.write(x86Memory.read(at: Int(address), count: count), at: Int(address))
            }
        }
        // A branch stops where X86 went (or, if unicorn goes elsewhere, at
        // the 0xCC bytes around the code or by the timeout); the rest after
        // their last byte.
        var until = address + UInt64(unicornBytes.count)
        if branch, x86 == .completed {
            until = mode == .real ? cpu.state.cs.base &+ cpu.state.rip : cpu.state.rip
            // unicorn stops at `until` only in code translated for this run.
            try? unicorn.forgetTranslations(at: until)
        }
        let unicornOutcome: Outcome
        // A branch to itself would stop before it runs: count one instead.
        let toItself = until == address
        if toItself { until = 0xFFFF_FFF0 }
        switch unicorn.step(at: address, until: until, timeout: branch ? 200_000 : 0, countOne: toItself) {
        case .completed: unicornOutcome = .completed
        case .exception(let vector): unicornOutcome = .exception(vector)
        case .error(let code, let message):
            let pc = unicorn.read(mode == .long64 ? .rip : .eip)
            if code == 8 /* UC_ERR_FETCH_UNMAPPED */ && pc != address {
                // The instruction completed; fetching the next one failed.
                unicornOutcome = .completed
            } else if code == 6 || code == 7 {
                unicornOutcome = .outsideMemory
            } else {
                unicornOutcome = .other("unicorn: \(message)")
            }
        }
        return (x86, unicornOutcome)
    }
}

extension CPUState {
    var segments: [SegmentRegister] { (0..<6).map { self[segmentIndex: $0] } }
}
