import Foundation
import Glibc
import Testing
@testable import X86

/// The register and memory state one SIMD or x87 instruction is run from,
/// on the host CPU (which the test process runs on) and on the soft CPU.
struct SIMDSnapshot: Equatable, CustomStringConvertible {
    var xmm = [UInt128](repeating: 0, count: 16)
    var mm = [UInt64](repeating: 0, count: 8)
    var mxcsr: UInt32 = 0x1F80
    /// RAX RCX RDX RBX.
    var gpr: [UInt64] = [0, 0, 0, 0]
    /// The arithmetic flags after the instruction (OF SF ZF AF PF CF).
    var flags: UInt64 = 0
    /// What RSI points to when the instruction runs.
    var memory = [UInt8](repeating: 0, count: SIMDSnapshot.memorySize)

    static let memorySize = 0x600

    var description: String {
        func hex(_ v: UInt128) -> String { String(v, radix: 16) }
        var lines: [String] = []
        for i in 0..<16 where xmm[i] != 0 { lines.append("xmm\(i)=\(hex(xmm[i]))") }
        for i in 0..<8 where mm[i] != 0 { lines.append("mm\(i)=\(String(mm[i], radix: 16))") }
        lines.append("mxcsr=\(String(mxcsr, radix: 16)) gpr=\(gpr.map { String($0, radix: 16) }) flags=\(String(flags, radix: 16))")
        return lines.joined(separator: " ")
    }
}

/// Runs instruction bytes natively: a stub loads the snapshot (XMM0-15,
/// MM0-7, MXCSR, RAX RCX RDX RBX, RSI = the snapshot's memory), runs the
/// instruction, and stores everything back. Only for instructions that
/// cannot fault with the given state: an unmasked SIMD exception would be
/// a SIGFPE in the test process.
enum HostCPU {
    // Block layout.
    static let xmmOffset = 0x000
    static let mxcsrOffset = 0x100
    static let savedMXCSROffset = 0x104
    static let gprOffset = 0x108
    static let flagsOffset = 0x128
    static let mmOffset = 0x180
    static let memoryOffset = 0x200
    static let blockSize = 0x800

    static func run(_ instruction: [UInt8], _ snapshot: SIMDSnapshot) -> SIMDSnapshot {
        var code: [UInt8] = [0x41, 0x57, 0x53, 0x49, 0x89, 0xFF]  // push r15; push rbx; mov r15, rdi
        func disp(_ value: Int) -> [UInt8] { withUnsafeBytes(of: Int32(value).littleEndian, Array.init) }
        func r15(_ prefix: [UInt8], _ opcode: [UInt8], reg: Int, _ offset: Int) -> [UInt8] {
            prefix + [0x41 | (reg >= 8 ? 4 : 0)] + opcode + [UInt8(0x87 | (reg & 7) << 3)] + disp(offset)
        }
        func r15w(_ opcode: UInt8, reg: Int, _ offset: Int) -> [UInt8] {
            [0x49, opcode, UInt8(0x87 | (reg & 7) << 3)] + disp(offset)
        }
        code += r15([], [0x0F, 0xAE], reg: 3, savedMXCSROffset)  // stmxcsr
        code += r15([], [0x0F, 0xAE], reg: 2, mxcsrOffset)  // ldmxcsr
        for i in 0..<16 { code += r15([0xF3], [0x0F, 0x6F], reg: i, xmmOffset + 16 * i) }
        for i in 0..<8 { code += r15([], [0x0F, 0x6F], reg: i, mmOffset + 8 * i) }
        for (i, reg) in [0, 1, 2, 3].enumerated() { code += r15w(0x8B, reg: reg, gprOffset + 8 * i) }
        code += r15w(0x8D, reg: 6, memoryOffset)  // lea rsi, [r15 + memory]
        code += [0x6A, 0x00, 0x9D]  // push 0; popfq: the arithmetic flags start clear, as on the soft CPU
        code += instruction
        code += [0x9C] + r15([], [0x8F], reg: 0, flagsOffset)  // pushfq; pop [r15 + flags]
        for (i, reg) in [0, 1, 2, 3].enumerated() { code += r15w(0x89, reg: reg, gprOffset + 8 * i) }
        for i in 0..<16 { code += r15([0xF3], [0x0F, 0x7F], reg: i, xmmOffset + 16 * i) }
        for i in 0..<8 { code += r15([], [0x0F, 0x7F], reg: i, mmOffset + 8 * i) }
        code += r15([], [0x0F, 0xAE], reg: 3, mxcsrOffset)
        code += r15([], [0x0F, 0xAE], reg: 2, savedMXCSROffset)
        code += [0x0F, 0x77, 0x5B, 0x41, 0x5F, 0xC3]  // emms; pop rbx; pop r15; ret

        let page = mmap(nil, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let page, page != MAP_FAILED else { fatalError("no executable page for the host CPU stub") }
        defer { munmap(page, 4096) }
        code.withUnsafeBytes { page.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }

        let block = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 64)
        defer { block.deallocate() }
        block.initializeMemory(as: UInt8.self, repeating: 0, count: blockSize)
        for i in 0..<16 { block.storeBytes(of: snapshot.xmm[i], toByteOffset: xmmOffset + 16 * i, as: UInt128.self) }
        for i in 0..<8 { block.storeBytes(of: snapshot.mm[i], toByteOffset: mmOffset + 8 * i, as: UInt64.self) }
        block.storeBytes(of: snapshot.mxcsr, toByteOffset: mxcsrOffset, as: UInt32.self)
        for i in 0..<4 { block.storeBytes(of: snapshot.gpr[i], toByteOffset: gprOffset + 8 * i, as: UInt64.self) }
        snapshot.memory.withUnsafeBytes { (block + memoryOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }

        let function = unsafeBitCast(page, to: (@convention(c) (UnsafeMutableRawPointer) -> Void).self)
        function(block)

        var result = SIMDSnapshot()
        for i in 0..<16 { result.xmm[i] = block.load(fromByteOffset: xmmOffset + 16 * i, as: UInt128.self) }
        for i in 0..<8 { result.mm[i] = block.load(fromByteOffset: mmOffset + 8 * i, as: UInt64.self) }
        result.mxcsr = block.load(fromByteOffset: mxcsrOffset, as: UInt32.self)
        for i in 0..<4 { result.gpr[i] = block.load(fromByteOffset: gprOffset + 8 * i, as: UInt64.self) }
        result.flags = block.load(fromByteOffset: flagsOffset, as: UInt64.self) & RFLAGS.arithmetic
        result.memory = Array(UnsafeRawBufferPointer(start: block + memoryOffset, count: SIMDSnapshot.memorySize))
        return result
    }
}

/// The same on the soft CPU: 64-bit mode with CR4.OSFXSR and OSXMMEXCPT
/// set, the memory at 0x4000 (16-byte aligned), the instruction then HLT.
/// One machine serves every run of a thread (a fresh one per run spent
/// most of the time clearing its megabyte of RAM).
enum SoftCPU {
    static let memoryAddress: UInt64 = 0x4000

    final class Cache: @unchecked Sendable {
        let machine = Machine(.long64, code: [])
        let initial: CPUState
        init() { initial = machine.cpu.state }
    }

    static func run(_ instruction: [UInt8], _ snapshot: SIMDSnapshot, cr0: UInt64 = 0, cr4: UInt64? = nil)
        -> (SIMDSnapshot, X86Exit) {
        let key = "SoftCPU.machine"
        let cache: Cache
        if let cached = Thread.current.threadDictionary[key] as? Cache {
            cache = cached
        } else {
            cache = Cache()
            Thread.current.threadDictionary[key] = cache
        }
        let m = cache.machine
        m.cpu.state = cache.initial
        m.write(instruction + [hlt], at: Machine.codeAddress)
        m.cpu.state.cr4 = cr4 ?? (m.cpu.state.cr4 | ControlBits.cr4OSFXSR | ControlBits.cr4OSXMMEXCPT)
        m.cpu.state.cr0 |= cr0
        m.cpu.state.fpu = .initialized
        for i in 0..<16 { m.cpu.state.fpu.setXMM(i, snapshot.xmm[i]) }
        for i in 0..<8 { m.cpu.state.fpu.setMM(i, snapshot.mm[i]) }  // as the host stub's MOVQ loads them
        m.cpu.state.fpu.mxcsr = snapshot.mxcsr
        for (i, reg) in [GPR.rax, .rcx, .rdx, .rbx].enumerated() { m[reg] = snapshot.gpr[i] }
        m[.rsi] = memoryAddress
        m[.rdi] = 0
        m.write(snapshot.memory, at: memoryAddress)
        let exit = m.run()
        var result = SIMDSnapshot()
        for i in 0..<16 { result.xmm[i] = m.cpu.state.fpu.xmm(i) }
        for i in 0..<8 { result.mm[i] = m.cpu.state.fpu.mm(i) }
        result.mxcsr = m.cpu.state.fpu.mxcsr
        for (i, reg) in [GPR.rax, .rcx, .rdx, .rbx].enumerated() { result.gpr[i] = m[reg] }
        result.flags = m.flags
        result.memory = Array(UnsafeRawBufferPointer(start: m.memory + Int(memoryAddress), count: SIMDSnapshot.memorySize))
        return (result, exit)
    }
}

/// A deterministic generator (SplitMix64), so that a failure can be replayed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Operands that reach the edges of each format: zeros, denormals, the
/// normal range's ends, values next to rounding ties, infinities, QNaNs and
/// SNaNs with payloads, of both signs.
enum EdgeOperands {
    static let single: [UInt32] = {
        let magnitudes: [UInt32] = [
            0, 1, 0x0000_0002, 0x0040_0000, 0x007F_FFFF, 0x0080_0000, 0x0080_0001, 0x00FF_FFFF, 0x0100_0000,
            0x3F80_0000, 0x3F80_0001, 0x3FFF_FFFF, 0x3FC0_0000, 0x4000_0000, 0x4040_0000, 0x3EAA_AAAB, 0x4B80_0000,
            0x4B7F_FFFF, 0x4EFF_FFFF, 0x4F00_0000, 0x5EFF_FFFF, 0x5F00_0000, 0x7F7F_FFFF, 0x7F00_0000, 0x0C00_0000,
            0x7F80_0000, 0x7FC0_0000, 0x7FC1_2345, 0x7F80_0001, 0x7FA0_0000, 0x3400_0000, 0x2000_0000, 0x6000_0000,
        ]
        return magnitudes + magnitudes.map { $0 | 0x8000_0000 }
    }()

    static let double: [UInt64] = {
        let magnitudes: [UInt64] = [
            0, 1, 0x000F_FFFF_FFFF_FFFF, 0x0008_0000_0000_0000, 0x0010_0000_0000_0000, 0x0010_0000_0000_0001,
            0x3FF0_0000_0000_0000, 0x3FF0_0000_0000_0001, 0x3FFF_FFFF_FFFF_FFFF, 0x3FF8_0000_0000_0000,
            0x4000_0000_0000_0000, 0x3FD5_5555_5555_5555, 0x4330_0000_0000_0000, 0x41DF_FFFF_FFC0_0000,
            0x41E0_0000_0000_0000, 0x43DF_FFFF_FFFF_FFFF, 0x43E0_0000_0000_0000, 0x7FEF_FFFF_FFFF_FFFF,
            0x47EF_FFFF_E000_0000, 0x47EF_FFFF_F000_0000, 0x3690_0000_0000_0000, 0x36A0_0000_0000_0001,
            0x7FF0_0000_0000_0000, 0x7FF8_0000_0000_0000, 0x7FF8_1234_5678_9ABC, 0x7FF0_0000_0000_0001,
            0x7FF4_0000_0000_0000, 0x3CB0_0000_0000_0000, 0x2000_0000_0000_0000, 0x6000_0000_0000_0000,
            0x3810_0000_0000_0000, 0x380F_FFFF_F000_0000, 0x47F0_0000_0000_0000,
            0x41DF_FFFF_FFE0_0000, 0x41E0_0000_0010_0000, 0x43E0_0000_0000_0001, 0x3FE0_0000_0000_0000,
            0x3FF8_0000_0000_0000, 0x4004_0000_0000_0000,
        ]
        return magnitudes + magnitudes.map { $0 | 0x8000_0000_0000_0000 }
    }()

    /// A lane value: an edge operand most of the time, else random bits.
    static func singleLane(_ random: inout SplitMix) -> UInt64 {
        random.next() % 4 == 0 ? random.next() & 0xFFFF_FFFF : UInt64(single[Int(random.next() % UInt64(single.count))])
    }

    static func doubleLane(_ random: inout SplitMix) -> UInt64 {
        random.next() % 4 == 0 ? random.next() : double[Int(random.next() % UInt64(double.count))]
    }

    static func vector(_ random: inout SplitMix, double: Bool) -> UInt128 {
        if double { return UInt128(doubleLane(&random)) | UInt128(doubleLane(&random)) << 64 }
        var value: UInt128 = 0
        for i in 0..<4 { value |= UInt128(singleLane(&random)) << (32 * i) }
        return value
    }

    /// MXCSR with every exception masked, flags clear, a random rounding mode, FTZ and DAZ.
    static func mxcsr(_ random: inout SplitMix) -> UInt32 {
        var value: UInt32 = 0x1F80 | UInt32(random.next() % 4) << 13
        if random.next() % 3 == 0 { value |= MXCSRFlag.ftz }
        if random.next() % 3 == 0 { value |= MXCSRFlag.daz }
        return value
    }
}
