import Foundation
import Testing
@testable import X86
@_exported import KVMTestSupport  // HostKVM and RealModeGuest, for every file of this test target
// The one table of flags the manuals leave undefined, and the seeded generator.
@_exported import X86OracleSupport

/// A software CPU over 1 MiB of zeroed RAM, with `code` at 0x1000 and RSP at
/// 0x8000, in one of three flat set-ups. The long-mode set-up identity-maps
/// the first 1 MiB with 4 KiB user, writable pages (tables at 0x10000).
final class Machine {
    enum Setup { case real, protected32, long64 }

    static let codeAddress: UInt64 = 0x1000
    static let memorySize = 0x10_0000
    static let pageTable: UInt64 = 0x13000

    let memory: UnsafeMutableRawPointer
    var cpu: X86CPU

    init(_ setup: Setup = .real, code: [UInt8]) {
        memory = UnsafeMutableRawPointer.allocate(byteCount: Machine.memorySize, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: Machine.memorySize)
        var state = CPUState()
        state.rip = Machine.codeAddress
        state[.rsp] = 0x8000
        switch setup {
        case .real:
            state[.cs] = .realMode(selector: 0, code: true)
        case .protected32:
            state.cr0 |= ControlBits.cr0PE
            for segment in SegmentRegisterName.allCases {
                state[segment] = SegmentRegister(selector: segment == .cs ? 8 : 16, base: 0, limit: 0xFFFF_FFFF,
                                                 attributes: segment == .cs ? 0xC09B : 0xC093)
            }
        case .long64:
            state.cr0 |= ControlBits.cr0PE | ControlBits.cr0PG
            state.cr4 |= ControlBits.cr4PAE
            state.efer = ControlBits.eferLME | ControlBits.eferLMA | ControlBits.eferNXE
            state.cr3 = 0x10000
            for segment in SegmentRegisterName.allCases {
                state[segment] = SegmentRegister(selector: segment == .cs ? 8 : 16, base: 0, limit: 0xFFFF_FFFF,
                                                 attributes: segment == .cs ? 0xA09B : 0xC093)
            }
            let m = memory
            m.storeBytes(of: 0x11000 | 7 as UInt64, toByteOffset: 0x10000, as: UInt64.self)
            m.storeBytes(of: 0x12000 | 7 as UInt64, toByteOffset: 0x11000, as: UInt64.self)
            m.storeBytes(of: Machine.pageTable | 7, toByteOffset: 0x12000, as: UInt64.self)
            for page in 0..<256 {
                m.storeBytes(of: UInt64(page) << 12 | 7, toByteOffset: Int(Machine.pageTable) + page * 8, as: UInt64.self)
            }
        }
        cpu = X86CPU(memory: PhysicalMemory(base: memory, size: Machine.memorySize), state: state)
        write(code, at: Machine.codeAddress)
    }

    deinit { memory.deallocate() }

    func write(_ bytes: [UInt8], at address: UInt64) {
        bytes.withUnsafeBytes { source in
            guard let base = source.baseAddress else { return }
            (memory + Int(address)).copyMemory(from: base, byteCount: source.count)
        }
    }

    func store64(_ address: UInt64, _ value: UInt64) { memory.storeBytes(of: value, toByteOffset: Int(address), as: UInt64.self) }
    func load64(_ address: UInt64) -> UInt64 { memory.loadUnaligned(fromByteOffset: Int(address), as: UInt64.self) }
    func load8(_ address: UInt64) -> UInt8 { memory.load(fromByteOffset: Int(address), as: UInt8.self) }

    /// Runs until an exit (the snippets end in HLT), at most 10 000 instructions.
    /// Every run is also made by a copy of the CPU without the decoded cache,
    /// over a copy of the memory, and the two must end alike (see
    /// `compareWithUncachedRun`): each guest program of these tests checks the
    /// cache against the reference path.
    @discardableResult
    func run(sourceLocation: SourceLocation = #_sourceLocation) -> X86Exit {
        run(maxInstructions: 10_000, sourceLocation: sourceLocation)
    }

    /// `cpu.run(maxInstructions:)`, checked against a run without the decoded cache as `run()` is.
    @discardableResult
    func run(maxInstructions: Int, sourceLocation: SourceLocation = #_sourceLocation) -> X86Exit {
        guard cpu.decodedCacheEnabled else { return cpu.run(maxInstructions: maxInstructions) }
        let reference = UncachedRun(cpu)
        // The reference runs first: the copy shares the cache's storage until
        // one of them runs, and the first to run takes a new one.
        reference.run(maxInstructions: maxInstructions)
        let exit = cpu.run(maxInstructions: maxInstructions)
        reference.expectSameOutcome(as: cpu, exit: exit, sourceLocation: sourceLocation)
        return exit
    }

    subscript(register: GPR) -> UInt64 {
        get { cpu.state[register] }
        set { cpu.state[register] = newValue }
    }

    /// OF SF ZF AF PF CF.
    var flags: UInt64 { cpu.state.rflags & RFLAGS.arithmetic }
}

/// Builds an arithmetic-flags value from letters: "O S Z A P C".
func flags(_ names: String) -> UInt64 {
    var value: UInt64 = 0
    for name in names {
        switch name {
        case "O": value |= RFLAGS.of
        case "S": value |= RFLAGS.sf
        case "Z": value |= RFLAGS.zf
        case "A": value |= RFLAGS.af
        case "P": value |= RFLAGS.pf
        case "C": value |= RFLAGS.cf
        default: break
        }
    }
    return value
}

let hlt: UInt8 = 0xF4

/// A copy of a CPU, with `decodedCacheEnabled` off, over copies of the
/// memory ranges it runs on.
final class UncachedRun {
    var cpu: X86CPU
    var exit: X86Exit = .instructionLimit
    let copies: [(copy: UnsafeMutableRawPointer, original: UnsafeMutableRawPointer, size: Int)]

    init(_ original: X86CPU) {
        cpu = original
        cpu.decodedCacheEnabled = false
        copies = original.memory.ranges.map { range in
            let copy = UnsafeMutableRawPointer.allocate(byteCount: Int(range.size), alignment: 4096)
            copy.copyMemory(from: range.host, byteCount: Int(range.size))
            return (copy, range.host, Int(range.size))
        }
        cpu.memory = PhysicalMemory(ranges: zip(original.memory.ranges, copies).map { range, copy in
            PhysicalRange(guestAddress: range.guestAddress, size: range.size, host: copy.copy, readOnly: range.readOnly)
        })
    }

    deinit { for copy in copies { copy.copy.deallocate() } }

    func run(maxInstructions: Int) { exit = cpu.run(maxInstructions: maxInstructions) }

    /// Exit, registers, flags, segments, control registers, the interrupt
    /// shadow and every byte of memory.
    func expectSameOutcome(as cached: X86CPU, exit cachedExit: X86Exit, sourceLocation: SourceLocation = #_sourceLocation) {
        let a = cached.state, b = cpu.state
        #expect(cachedExit == exit, "exit with the cache and without", sourceLocation: sourceLocation)
        #expect((0..<16).map { a.gpr[$0] } == (0..<16).map { b.gpr[$0] }, "GPRs with the cache and without",
                sourceLocation: sourceLocation)
        #expect(a.rip == b.rip && a.rflags == b.rflags, "RIP, RFLAGS with the cache and without", sourceLocation: sourceLocation)
        #expect(SegmentRegisterName.allCases.allSatisfy { a[$0] == b[$0] }, "segments with the cache and without",
                sourceLocation: sourceLocation)
        #expect([a.cr0, a.cr2, a.cr3, a.cr4, a.efer] == [b.cr0, b.cr2, b.cr3, b.cr4, b.efer],
                "control registers with the cache and without", sourceLocation: sourceLocation)
        #expect(cached.interruptShadowKind == cpu.interruptShadowKind, "interrupt shadow with the cache and without",
                sourceLocation: sourceLocation)
        for (copy, original, size) in copies {
            let same = memcmp(copy, original, size) == 0
            #expect(same, "memory with the cache and without", sourceLocation: sourceLocation)
        }
    }
}
