import Testing
@testable import X86

/// The integer instructions beyond the ALU core against the host's KVM
/// emulator, in real, flat protected and long mode: CMPXCHG, XADD, BSF/BSR,
/// SHLD/SHRD, BSWAP, CMPXCHG8B, ENTER, PUSHA/POPA, XLAT, DAS, AAM, AAD,
/// LDS/LES/LSS/LFS/LGS, LOCK forms, CMC, MOVNTI.
///
/// What the emulator refuses (an internal-error exit) is tested against the
/// manuals in IntegerInstructionTests instead: DAA, AAA, AAS, BOUND,
/// POPCNT, ENTER with a nesting level, CMPXCHG16B. It runs LZCNT as BSR (no
/// F3 check), and differs from the CPU in three places the generator avoids:
/// a failing 32-bit CMPXCHG zero-extends a register destination, AAM and AAD
/// set SF and ZF from AX or EAX rather than AL, and ENTER pushes rBP at the
/// stack's size rather than the operand size.
@Suite("X86 integer instructions against the host's KVM emulator", .enabled(if: HostKVM.isAvailable))
struct IntegerDifferentialTests {
    @Test(arguments: [UInt64(41), 42, 43, 44])
    func realModeIntegerInstructionsMatchHost(seed: UInt64) throws {
        try DifferentialTests().compare(IntegerProgram(setup: .real).generate(seed: seed, count: 80), seed: seed)
    }

    @Test(arguments: [UInt64(51), 52, 53, 54])
    func flatProtectedModeIntegerInstructionsMatchHost(seed: UInt64) throws {
        try DifferentialTests().compare(IntegerProgram(setup: .protected32).generate(seed: seed, count: 80), seed: seed,
                                        setup: .protected32)
    }

    @Test(arguments: [UInt64(61), 62, 63, 64])
    func longModeIntegerInstructionsMatchHost(seed: UInt64) throws {
        try DifferentialTests().compare(IntegerProgram(setup: .long64).generate(seed: seed, count: 80), seed: seed,
                                        setup: .long64)
    }
}
