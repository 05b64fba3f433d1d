import Foundation
import Testing
@testable import X86
import X86OracleSupport

/// The CPU set-ups the fuzzer starts random code in.
enum FuzzMode: String, CaseIterable, Sendable, CustomStringConvertible {
    case real, protected16, protected32, long64
    /// CPL 3 in 32-bit protected mode (no paging: user code may write anything).
    case user32
    /// CPL 3 in 64-bit mode, with the system structures on supervisor pages.
    case user64
    var description: String { rawValue }
    var isUser: Bool { self == .user32 || self == .user64 }
    var isLong: Bool { self == .long64 || self == .user64 }
}

/// Where things are in the fuzzer's 1 MiB of guest memory.
enum FuzzLayout {
    static let memorySize = 0x10_0000
    static let gdt: UInt64 = 0x500
    static let idt: UInt64 = 0x1000
    /// Every exception handler: HLT (a CPL 0 exit), then a jump back to it.
    static let handler: UInt64 = 0x2000
    static let pml4: UInt64 = 0x3000, pdpt: UInt64 = 0x4000, pd: UInt64 = 0x5000, pt: UInt64 = 0x6000
    /// The TSS, and the CPL 0 stack an exception at CPL 3 switches to.
    static let tss: UInt64 = 0x7000
    static let kernelStack: UInt64 = 0xA000
    /// The first byte user code may touch when paging protects the rest.
    static let userStart: UInt64 = 0x10000
    static let code: UInt64 = 0x10000
    static let stack: UInt64 = 0x80000
    /// What each program starts from: restored before it runs.
    static let systemEnd = 0x30000

    // GDT selectors.
    static let code32: UInt16 = 0x08, data32: UInt16 = 0x10, code64: UInt16 = 0x18, code16: UInt16 = 0x20
    static let data16: UInt16 = 0x28, userCode32: UInt16 = 0x33, userData: UInt16 = 0x3B, userCode64: UInt16 = 0x43
    static let taskState: UInt16 = 0x48
    static let descriptors: [UInt64] = [
        0,
        0x00CF_9B00_0000_FFFF,  // 08 code, 32-bit
        0x00CF_9300_0000_FFFF,  // 10 data
        0x00AF_9B00_0000_FFFF,  // 18 code, 64-bit
        0x000F_9B00_0000_FFFF,  // 20 code, 16-bit
        0x000F_9300_0000_FFFF,  // 28 data, 16-bit
        0x00CF_FB00_0000_FFFF,  // 30 code, 32-bit, DPL 3
        0x00CF_F300_0000_FFFF,  // 38 data, DPL 3
        0x00AF_FB00_0000_FFFF,  // 40 code, 64-bit, DPL 3
        0x0000_8B00_7000_0067,  // 48 TSS at 0x7000, busy (in long mode 16 bytes, the upper half 0)
        0,
    ]
}

/// One X86 over guarded memory, set up in a fuzz mode, that runs random
/// programs and checks what must hold whatever they do.
final class FuzzMachine {
    let mode: FuzzMode
    let deliversExceptions: Bool
    let memory = GuardedMemory(size: FuzzLayout.memorySize)
    let initial: CPUState
    let snapshot: [UInt8]
    /// `systemTables()` as set up.
    var initialTables: [UInt64] = []
    var cpu: X86CPU

    init(mode: FuzzMode, deliversExceptions: Bool) {
        self.mode = mode
        self.deliversExceptions = deliversExceptions
        var state = CPUState()
        state.rip = FuzzLayout.code
        state[.rsp] = FuzzLayout.stack
        state.rflags = 0x2
        for (index, descriptor) in FuzzLayout.descriptors.enumerated() {
            memory.store(descriptor, at: Int(FuzzLayout.gdt) + index * 8)
        }
        memory.write([0xF4, 0xEB, 0xFD], at: Int(FuzzLayout.handler))
        if mode == .real {
            // CS:IP = 1000:0000, the code's linear address; SS:SP = 7000:FFF0.
            state[.cs] = .realMode(selector: UInt16(FuzzLayout.code >> 4), code: true)
            state.rip = 0
            state[.ss] = .realMode(selector: UInt16(FuzzLayout.stack >> 4) - 0x1000)
            state[.rsp] = 0xFFF0
            state.idtr = DescriptorTableRegister(base: 0, limit: 0x3FF)
            for vector in 0..<256 { memory.store(UInt32(FuzzLayout.handler), at: vector * 4) }
        } else {
            state.cr0 |= ControlBits.cr0PE
            state.gdtr = DescriptorTableRegister(base: FuzzLayout.gdt, limit: UInt16(FuzzLayout.descriptors.count * 8 - 1))
            let long = mode.isLong
            state.idtr = DescriptorTableRegister(base: FuzzLayout.idt, limit: long ? 0xFFF : 0x7FF)
            for vector in 0..<256 {
                // Interrupt gates to the CPL 0 handler (64-bit gates take 16 bytes).
                let selector = long ? FuzzLayout.code64 : FuzzLayout.code32
                let gate = (FuzzLayout.handler & 0xFFFF) | UInt64(selector) << 16 | UInt64(0x8E) << 40
                    | (FuzzLayout.handler & 0xFFFF_0000) << 32
                memory.store(gate, at: Int(FuzzLayout.idt) + vector * (long ? 16 : 8))
            }
            // The TSS: RSP0 (64-bit) or ESP0 and SS0 (32-bit); no I/O bitmap.
            if mode.isLong {
                memory.store(FuzzLayout.kernelStack, at: Int(FuzzLayout.tss) + 4)
            } else {
                memory.store(UInt32(FuzzLayout.kernelStack), at: Int(FuzzLayout.tss) + 4)
                memory.store(UInt32(FuzzLayout.data32), at: Int(FuzzLayout.tss) + 8)
            }
            memory.store(UInt16(0x68), at: Int(FuzzLayout.tss) + 0x66)
            state.tr = SegmentRegister(selector: FuzzLayout.taskState, base: FuzzLayout.tss, limit: 0x67, attributes: 0x8B)
            state.ldtr = SegmentRegister(selector: 0, base: 0, limit: 0, attributes: 0)
            func flat(_ selector: UInt16, _ attributes: UInt16, limit: UInt32 = 0xFFFF_FFFF) -> SegmentRegister {
                SegmentRegister(selector: selector, base: 0, limit: limit, attributes: attributes)
            }
            let data = flat(FuzzLayout.data32, 0xC093)
            state.ds = data; state.es = data; state.fs = data; state.gs = data; state.ss = data
            switch mode {
            case .protected16:
                state.cs = flat(FuzzLayout.code16, 0x009B, limit: 0xFFFFF)
                let data16 = flat(FuzzLayout.data16, 0x0093, limit: 0xFFFFF)
                state.ds = data16; state.es = data16; state.ss = data16
            case .protected32:
                state.cs = flat(FuzzLayout.code32, 0xC09B)
            case .user32:
                state.cs = flat(FuzzLayout.userCode32, 0xC0FB)
                let user = flat(FuzzLayout.userData, 0xC0F3)
                state.ds = user; state.es = user; state.fs = user; state.gs = user; state.ss = user
            case .long64, .user64:
                state.cs = mode == .user64 ? flat(FuzzLayout.userCode64, 0xA0FB) : flat(FuzzLayout.code64, 0xA09B)
                if mode == .user64 {
                    let user = flat(FuzzLayout.userData, 0xC0F3)
                    state.ds = user; state.es = user; state.fs = user; state.gs = user; state.ss = user
                }
                // 4 KiB pages over the first MiB: the system structures below
                // userStart are supervisor-only, the rest user, all writable.
                memory.store(FuzzLayout.pdpt | 7, at: Int(FuzzLayout.pml4))
                memory.store(FuzzLayout.pd | 7, at: Int(FuzzLayout.pdpt))
                memory.store(FuzzLayout.pt | 7, at: Int(FuzzLayout.pd))
                for page in 0..<256 {
                    let user: UInt64 = UInt64(page) << 12 >= FuzzLayout.userStart ? 4 : 0
                    memory.store(UInt64(page) << 12 | 3 | user, at: Int(FuzzLayout.pt) + page * 8)
                }
                state.cr3 = FuzzLayout.pml4
                state.cr4 |= ControlBits.cr4PAE
                state.efer = ControlBits.eferLME | ControlBits.eferLMA | ControlBits.eferNXE
                state.cr0 |= ControlBits.cr0PG | ControlBits.cr0WP
            case .real:
                break
            }
        }
        initial = state
        snapshot = memory.read(at: 0, count: FuzzLayout.systemEnd)
        cpu = X86CPU(memory: PhysicalMemory(base: memory.base, size: FuzzLayout.memorySize), state: state)
        initialTables = systemTables()
    }

    /// Runs the program of `seed`; returns what went wrong (empty: nothing).
    /// `simd` draws x87 and 0F-map SIMD instructions (with their prefixes)
    /// from a random FPU, MXCSR, CR0 and CR4 state rather than plain bytes.
    func run(seed: UInt64, simd: Bool = false, exits: inout [String: Int], moved: inout Int) -> [String] {
        var rng = SplitMix64(state: seed)
        memory.write(snapshot, at: 0)
        let code = simd ? simdCode(&rng) : (0..<(16 + rng.below(112))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        memory.write(code, at: Int(FuzzLayout.code))
        var state = initial
        if simd { randomizeFPU(&state, &rng) }
        for register in GPR.allCases where register != .rsp {
            // Small values half the time, so that memory operands often land in RAM.
            state[register] = rng.below(2) == 0 ? rng.next() & 0xFFFF : rng.next()
        }
        if rng.oneIn(4) { state[.rsp] = rng.next() & 0xF_FFFF }
        state.rflags = 0x2 | (rng.next() & (RFLAGS.arithmetic | RFLAGS.df))
        cpu = X86CPU(memory: cpu.memory, state: state)
        cpu.deliversExceptions = deliversExceptions
        var problems: [String] = []
        for _ in 0..<4 {
            let exit = cpu.run(maxInstructions: 64)
            exits[String(describing: exit).prefix(while: { $0 != "(" }).description, default: 0] += 1
            if cpu.state.rip != initial.rip { moved += 1 }
            problems += check(exit)
            switch exit {
            case .io(let io) where !io.isWrite && cpu.hasStringInput:
                let bytes = (0..<io.size * io.count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                bytes.withUnsafeBytes { cpu.completeStringInput($0) }
            case .io(let io) where !io.isWrite: cpu.completeInput(rng.next())
            case .mmio(let access) where !access.isWrite: cpu.completeMMIORead(address: access.address, value: rng.next())
            case .shutdown, .emulationFailure: break
            default: break
            }
        }
        if mode == .user64 && systemTables() != initialTables {
            problems.append("user code changed the supervisor pages' GDT, IDT, TSS, handler or page tables (beyond A/D bits)")
        }
        return problems
    }

    /// Four x87 or 0F-map SIMD instructions: mostly mandatory prefixes,
    /// sometimes LOCK, a segment or an address-size override, REX in 64-bit
    /// code, then random ModRM, SIB, displacement and immediate bytes.
    func simdCode(_ rng: inout SplitMix64) -> [UInt8] {
        let prefixes: [UInt8] = [0x66, 0xF2, 0xF3, 0x66, 0xF2, 0xF3, 0x66, 0xF0, 0x2E, 0x67]
        var code: [UInt8] = []
        for _ in 0..<4 {
            if rng.below(2) == 0 { code.append(rng.pick(prefixes)) }
            if rng.oneIn(3) { code.append(rng.pick(prefixes)) }
            if mode.isLong && rng.below(2) == 0 { code.append(0x40 | UInt8(rng.below(16))) }
            switch rng.below(5) {
            case 0: code.append(0xD8 + UInt8(rng.below(8)))
            case 1: code.append(0x9B)
            case 2: code += [0x0F, rng.below(2) == 0 ? 0x38 : 0x3A, UInt8(rng.below(32))]
            default:
                code += [0x0F, rng.pick([0x0D, 0x10, 0x28, 0x50, 0x60, 0x70, 0xAE, 0xC2, 0xD0, 0xE0, 0xF0] as [UInt8]) + UInt8(rng.below(16))]
            }
            code += (0..<6).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        }
        return code
    }

    /// An FPU usable most of the time (CR0.EM/TS and CR4.OSFXSR say so), with
    /// random control and status words, tags, MXCSR, XMM and x87 registers.
    func randomizeFPU(_ state: inout CPUState, _ rng: inout SplitMix64) {
        if rng.oneIn(8) { state.cr0 |= rng.next() & (ControlBits.cr0MP | ControlBits.cr0EM | ControlBits.cr0TS) }
        state.cr0 |= rng.next() & ControlBits.cr0NE
        if !rng.oneIn(8) { state.cr4 |= ControlBits.cr4OSFXSR }
        state.cr4 |= rng.next() & ControlBits.cr4OSXMMEXCPT
        state.fpu.mxcsr = UInt32(truncatingIfNeeded: rng.next()) & 0xFFFF | (rng.below(2) == 0 ? 0x1F80 : 0)
        state.fpu.fcw = UInt16(truncatingIfNeeded: rng.next())
        state.fpu.fsw = UInt16(truncatingIfNeeded: rng.next()) & (rng.below(2) == 0 ? 0x7F7F : 0xFFFF)
        state.fpu.tags = UInt8(truncatingIfNeeded: rng.next())
        for index in 0..<16 {
            // Lanes of edge values or random bits.
            let edges: [UInt64] = [0, 0x8000_0000_0000_0000, 0x7FF0_0000_0000_0000, 0x7FF8_0000_0000_0000, 0x0000_0000_0000_0001,
                                   0x7F80_0000_7FC0_0000, 0x3FF0_0000_0000_0000, ~0]
            let low = rng.below(2) == 0 ? rng.pick(edges) : rng.next()
            let high = rng.below(2) == 0 ? rng.pick(edges) : rng.next()
            state.fpu.setXMM(index, UInt128(high) << 64 | UInt128(low))
        }
        for index in 0..<8 { state.fpu.setPhysical(index, UInt128(rng.next()) << 64 | UInt128(rng.next())) }
    }

    /// What must hold after every exit.
    func check(_ exit: X86Exit) -> [String] {
        var problems: [String] = []
        let state = cpu.state
        if case .exception(let vector, let errorCode) = exit {
            if vector >= 32 { problems.append("exit with exception vector \(vector)") }
            // SDM Vol. 3 table 6-1: #DF #TS #NP #SS #GP #PF #AC #CP push an error code.
            let pushesCode = [8, 10, 11, 12, 13, 14, 17, 21].contains(vector)
            if pushesCode != (errorCode != nil) {
                problems.append("exception \(vector) with error code \(String(describing: errorCode))")
            }
            if deliversExceptions && vector != Vector.db.rawValue {
                problems.append("exception \(vector) exited although the guest's IDT delivers it")
            }
        }
        let rflags = state.rflags
        if rflags & 0x2 == 0 || rflags & (1 << 3 | 1 << 5 | 1 << 15 | ~UInt64(0x3F_FFFF)) != 0 {
            problems.append("RFLAGS \(String(rflags, radix: 16)): a reserved bit is wrong")
        }
        // With the system structures intact (user code cannot write their
        // pages in 64-bit mode; without paging it can, and then anything may
        // run at CPL 0), the only code below CPL 3 is the handler, a HLT,
        // reached through the IDT (a delivered exception, or INT1, which the
        // gates' DPL does not stop). IOPL is 0 and the TSS has no I/O bitmap.
        if mode.isUser && systemTables() == initialTables {
            let kernel = state.cpl != 3
            if kernel && !(FuzzLayout.handler...FuzzLayout.handler + 2).contains(state.rip) {
                problems.append("CPL \(state.cpl) at \(String(state.rip, radix: 16)), outside the kernel's handler")
            }
            switch exit {
            case .io: problems.append("I/O exit from user code (CPL \(state.cpl), IOPL 0)")
            case .halt where !kernel: problems.append("HLT exited at CPL 3")
            default: break
            }
            if state.cr0 != initial.cr0 || state.cr3 != initial.cr3 || state.cr4 != initial.cr4 || state.efer != initial.efer
                || state.gdtr != initial.gdtr || state.idtr != initial.idtr || state.tr != initial.tr {
                problems.append("user code changed CR0/CR3/CR4/EFER/GDTR/IDTR/TR")
            }
            if state.rflags & RFLAGS.iopl != 0 { problems.append("user code raised IOPL") }
            if case .shutdown = exit {
                problems.append("triple fault from user code with the GDT, IDT and TSS intact")
            }
        }
        return problems
    }

    /// The GDT, the IDT, the page tables, the TSS and the handler, with the accessed and dirty
    /// bits the page walk may set masked out.
    func systemTables() -> [UInt64] {
        var words: [UInt64] = []
        for offset in stride(from: Int(FuzzLayout.gdt), to: Int(FuzzLayout.gdt) + FuzzLayout.descriptors.count * 8, by: 8) {
            words.append(memory.load(at: offset, as: UInt64.self))
        }
        for offset in stride(from: Int(FuzzLayout.idt), to: Int(FuzzLayout.idt) + 0x1000, by: 8) {
            words.append(memory.load(at: offset, as: UInt64.self))
        }
        for offset in stride(from: Int(FuzzLayout.pml4), to: Int(FuzzLayout.pt) + 0x1000, by: 8) {
            words.append(memory.load(at: offset, as: UInt64.self) & ~0x60)
        }
        for offset in stride(from: Int(FuzzLayout.tss), to: Int(FuzzLayout.tss) + 0x68, by: 8) {
            words.append(memory.load(at: offset, as: UInt64.self))
        }
        words.append(memory.load(at: Int(FuzzLayout.handler), as: UInt64.self) & 0xFF_FFFF)
        return words
    }
}

/// Runs the fuzz programs of one mode and records each problem with its seed.
func fuzz(_ mode: FuzzMode, deliversExceptions: Bool, simd: Bool = false) {
    let index = FuzzMode.allCases.firstIndex(of: mode) ?? 0
    let base: UInt64 = 0xF022_0000_0000 | UInt64(index) << 16
        | (deliversExceptions ? 0x8000 : 0) | (simd ? 0x4000 : 0)
    let machine = FuzzMachine(mode: mode, deliversExceptions: deliversExceptions)
    let slot = CrashNotes.claimSlot()
    let watchdog = Watchdog(seconds: 60)
    defer { watchdog.stop() }
    var exits: [String: Int] = [:]
    var moved = 0
    var failures = 0
    for seed in FuzzConfiguration.seeds(base: base) {
        let note = "fuzz \(mode)\(simd ? " SIMD" : "") delivery \(deliversExceptions): SWIFTKVM_FUZZ_SEED=0x\(String(seed, radix: 16))"
        CrashNotes.write(note, slot: slot)
        watchdog.tick(note)
        let problems = machine.run(seed: seed, simd: simd, exits: &exits, moved: &moved)
        if !problems.isEmpty {
            failures += 1
            if failures <= 5 { Issue.record("\(note): \(problems.joined(separator: "; "))") }
        }
    }
    CrashNotes.write("", slot: slot)
    // Code ran at all: instructions completed, and (where faults do not all
    // look alike) several kinds of exit were reached.
    #expect(moved > 0, "no program moved RIP: \(exits)")
    if !mode.isUser && FuzzConfiguration.replaySeed == nil { #expect(exits.count > 2, "\(exits)") }
    #expect(failures == 0, "\(failures) programs broke an invariant in \(mode)")
}

// One suite per mode, so that a mode can be run (and fail) on its own:
// `swift test --filter "X86FuzzTests.RealMode"`.

@Suite("X86 fuzzing: real mode")
struct RealModeFuzzTests {
    @Test(arguments: [false, true])
    func randomBytesEndInExitsOrGuestExceptions(deliversExceptions: Bool) { fuzz(.real, deliversExceptions: deliversExceptions) }

    /// x87, MMX and SSE instructions from random FPU states.
    @Test func randomSIMDInstructionsEndInExitsOrGuestExceptions() { fuzz(.real, deliversExceptions: false, simd: true) }
}

@Suite("X86 fuzzing: 16-bit protected mode")
struct Protected16FuzzTests {
    @Test(arguments: [false, true])
    func randomBytesEndInExitsOrGuestExceptions(deliversExceptions: Bool) {
        fuzz(.protected16, deliversExceptions: deliversExceptions)
    }
}

@Suite("X86 fuzzing: 32-bit protected mode")
struct Protected32FuzzTests {
    @Test(arguments: [false, true])
    func randomBytesEndInExitsOrGuestExceptions(deliversExceptions: Bool) {
        fuzz(.protected32, deliversExceptions: deliversExceptions)
    }

    /// x87, MMX and SSE instructions from random FPU states.
    @Test func randomSIMDInstructionsEndInExitsOrGuestExceptions() { fuzz(.protected32, deliversExceptions: false, simd: true) }
}

@Suite("X86 fuzzing: 64-bit long mode with paging")
struct LongModeFuzzTests {
    @Test(arguments: [false, true])
    func randomBytesEndInExitsOrGuestExceptions(deliversExceptions: Bool) { fuzz(.long64, deliversExceptions: deliversExceptions) }

    /// x87, MMX and SSE instructions from random FPU states.
    @Test func randomSIMDInstructionsEndInExitsOrGuestExceptions() { fuzz(.long64, deliversExceptions: false, simd: true) }
}

@Suite("X86 fuzzing: CPL 3")
struct UserModeFuzzTests {
    /// 32-bit protected mode without paging.
    @Test(arguments: [false, true])
    func randomBytesAtCPL3In32BitModeCannotReachTheSystem(deliversExceptions: Bool) {
        fuzz(.user32, deliversExceptions: deliversExceptions)
    }

    /// 64-bit mode, the system structures on supervisor pages.
    @Test func randomBytesAtCPL3In64BitModeCannotReachTheSystem() {
        fuzz(.user64, deliversExceptions: false)
    }

    /// The same with exceptions delivered through the IDT (to CPL 0, on the TSS's stack).
    @Test func randomBytesAtCPL3In64BitModeWithDeliveryCannotReachTheSystem() {
        fuzz(.user64, deliversExceptions: true)
    }
}
