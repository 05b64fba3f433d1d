import CLinuxKVM
import KVM
import Testing
@testable import SoftKVM

/// KVM_GET_SUPPORTED_CPUID must advertise only what SoftKVM's CPU does: a
/// guest that sees a feature bit uses the instruction, and a #UD there is
/// a crash for it. Each advertised feature's instruction must run on the
/// soft CPU without #UD.
@Suite("SoftKVM's supported CPUID is what its CPU implements")
struct SupportedCPUIDTests {
    /// A feature bit and a real-mode instruction that needs it.
    struct Feature: CustomTestStringConvertible, Sendable {
        let name: String
        let function: UInt32
        let register: KeyPath<CPUIDEntry, UInt32> & Sendable
        let bit: Int
        let instruction: [UInt8]
        var testDescription: String { name }
    }

    static let features: [Feature] = [
        Feature(name: "FPU (fninit; fld1; fsqrt; fistp word [0x2000])", function: 1, register: \.edx, bit: 0,
                instruction: [0xDB, 0xE3, 0xD9, 0xE8, 0xD9, 0xFA, 0xDF, 0x1E, 0x00, 0x20]),
        Feature(name: "TSC (rdtsc)", function: 1, register: \.edx, bit: 4, instruction: [0x0F, 0x31]),
        Feature(name: "CX8 (cmpxchg8b [0x2000])", function: 1, register: \.edx, bit: 8, instruction: [0x0F, 0xC7, 0x0E, 0x00, 0x20]),
        Feature(name: "CMOV (cmovz ax, bx)", function: 1, register: \.edx, bit: 15, instruction: [0x0F, 0x44, 0xC3]),
        Feature(name: "CLFSH (clflush [0x2000])", function: 1, register: \.edx, bit: 19, instruction: [0x0F, 0xAE, 0x3E, 0x00, 0x20]),
        Feature(name: "MMX (paddb mm0, mm1)", function: 1, register: \.edx, bit: 23, instruction: [0x0F, 0xFC, 0xC1]),
        Feature(name: "SSE3 (haddps xmm0, xmm1)", function: 1, register: \.ecx, bit: 0, instruction: [0xF2, 0x0F, 0x7C, 0xC1]),
        Feature(name: "SSSE3 (pshufb xmm0, xmm1)", function: 1, register: \.ecx, bit: 9, instruction: [0x66, 0x0F, 0x38, 0x00, 0xC1]),
        Feature(name: "FXSR (fxsave [0x2000])", function: 1, register: \.edx, bit: 24, instruction: [0x0F, 0xAE, 0x06, 0x00, 0x20]),
        Feature(name: "SSE (xorps xmm0, xmm0)", function: 1, register: \.edx, bit: 25, instruction: [0x0F, 0x57, 0xC0]),
        Feature(name: "SSE2 (xorpd xmm0, xmm0)", function: 1, register: \.edx, bit: 26, instruction: [0x66, 0x0F, 0x57, 0xC0]),
        Feature(name: "POPCNT (popcnt ax, bx)", function: 1, register: \.ecx, bit: 23, instruction: [0xF3, 0x0F, 0xB8, 0xC3]),
        Feature(name: "LAHF (lahf)", function: 0x8000_0001, register: \.ecx, bit: 0, instruction: [0x9F]),
        Feature(name: "ABM (lzcnt ax, bx)", function: 0x8000_0001, register: \.ecx, bit: 5, instruction: [0xF3, 0x0F, 0xBD, 0xC3]),
        Feature(name: "SMAP (stac; clac)", function: 7, register: \.ebx, bit: 20, instruction: [0x0F, 0x01, 0xCB, 0x0F, 0x01, 0xCA]),
        // mov cx, 16; mov si, 0x2000; mov di, 0x2100; rep movsb; rep stosb
        Feature(name: "ERMS (rep movsb; rep stosb)", function: 7, register: \.ebx, bit: 9,
                instruction: [0xB9, 0x10, 0x00, 0xBE, 0x00, 0x20, 0xBF, 0x00, 0x21, 0xF3, 0xA4, 0xB9, 0x10, 0x00, 0xF3, 0xAA]),
        Feature(name: "FSRM (rep movsb)", function: 7, register: \.edx, bit: 4,
                instruction: [0xB9, 0x03, 0x00, 0xBE, 0x00, 0x20, 0xBF, 0x00, 0x21, 0xF3, 0xA4]),
    ]

    static let undefinedOpcodePort: UInt16 = 0x66
    static let donePort: UInt16 = 0x10

    @Test(arguments: features)
    func advertisedFeatureDoesNotRaiseUD(_ feature: Feature) throws {
        let hypervisor = try Hypervisor(backend: SoftBackend())
        let supported = try hypervisor.supportedCPUID()
        let leaf = supported.first { $0.function == feature.function }
        let advertised = leaf.map { $0[keyPath: feature.register] & (1 << feature.bit) != 0 } ?? false
        guard advertised else { return }

        // The instruction, then `out 0x10, al`; #UD's real-mode vector 6 goes to `out 0x66, al`.
        let guest = try RealModeGuest(hypervisor: hypervisor, code: feature.instruction + [0xE6, 0x10, 0xF4])
        try guest.memory.write([0xE6, 0x66, 0xF4], at: 0x3000)
        try guest.memory.store(UInt32(0x0000_3000), at: 6 * 4)
        try guest.vcpu.setCPUID(supported)
        var special = try guest.vcpu.specialRegisters()
        special.cr4 |= 1 << 9  // OSFXSR, without which SSE instructions #UD on any CPU
        try guest.vcpu.setSpecialRegisters(special)

        let exit = try guest.vcpu.run()
        #expect(exit == .io(PortIO(direction: .out, port: Self.donePort, size: 1, value: UInt32(try guest.vcpu.registers().rax & 0xFF))),
                "\(feature.name) is advertised but the soft CPU ended with \(exit)")
    }

    @Test func undefinedOpcodeReachesVectorSix() throws {
        // The harness itself: ud2 must land in the #UD handler.
        let hypervisor = try Hypervisor(backend: SoftBackend())
        let guest = try RealModeGuest(hypervisor: hypervisor, code: [0x0F, 0x0B, 0xE6, 0x10, 0xF4])
        try guest.memory.write([0xE6, 0x66, 0xF4], at: 0x3000)
        try guest.memory.store(UInt32(0x0000_3000), at: 6 * 4)
        guard case .io(let io) = try guest.vcpu.run() else { Issue.record("no port exit"); return }
        #expect(io.port == Self.undefinedOpcodePort)
    }
}
