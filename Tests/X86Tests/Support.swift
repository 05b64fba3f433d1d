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
    @discardableResult
    func run() -> X86Exit { cpu.run(maxInstructions: 10_000) }

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
