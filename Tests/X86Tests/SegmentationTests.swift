import Testing
import KVM
@testable import X86

/// A 32-bit CPL-0 guest (SystemGuest.protected32) whose #NP, #SS and #GP
/// handlers report the error code on ports 0x3B, 0x3C and 0x3D; success
/// ends in `out 0x10, al`.
private func segmentGuest(_ code: [UInt8]) -> SystemGuest {
    var g = SystemGuest.protected32(code: code + [0xE6, 0x10, 0xF4])
    for vector in 11...13 {
        g.write([0x58, 0xE7, UInt8(0x30 + vector), 0xF4], at: SystemGuest.handlers + vector * 0x10)
        g.gate32(vector, handler: UInt32(SystemGuest.handlers + vector * 0x10))
    }
    // The LDT: null, data based at 0x3000, a data segment not present.
    g.store64(SystemGuest.descriptor(type: 0x3, dpl: 0, base: 0x3000, limit: 0xFFFF, g: false), at: 0x6808)
    g.store64(SystemGuest.descriptor(type: 0x3, dpl: 0, present: false), at: 0x6810)
    g.store32(0xCAFE, at: 0x3000)
    return g
}

struct SegmentCase: CustomTestStringConvertible, Sendable {
    let name: String
    let code: [UInt8]
    let exit: String
    /// kvm_pvm pushes the exception frame as if SS's base were 0: where the
    /// frame goes on a based stack, its memory is not compared.
    var basedStack = false
    var testDescription: String { name }
}

/// Segment loads and limit checks at CPL 0, which the host's KVM runs in
/// its instruction emulator: the same faults and error codes.
@Suite("X86 segment checks against the host", .enabled(if: HostKVM.isAvailable))
struct SegmentDifferentialTests {
    static let cases: [SegmentCase] = [
        SegmentCase(name: "read past a byte-granular limit is #GP(0)",
                    code: [0xB8, 0x40, 0x00, 0x00, 0x00, 0x8E, 0xD8, 0xA1, 0xFC, 0x00, 0x00, 0x00, 0xA1, 0xFD, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "expand-down segment refuses offsets up to its limit",
                    code: [0xB8, 0x48, 0x00, 0x00, 0x00, 0x8E, 0xD8, 0xA1, 0x00, 0x80, 0x00, 0x00, 0xA1, 0xFE, 0x7F, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "write to read-only data is #GP(0)",
                    code: [0xB8, 0x50, 0x00, 0x00, 0x00, 0x8E, 0xD8, 0xA1, 0x00, 0x00, 0x00, 0x00, 0xA3, 0x00, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "access through a null DS is #GP(0)",
                    code: [0x31, 0xC0, 0x8E, 0xD8, 0xA1, 0x00, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "stack access past SS's limit is #SS(0)",
                    code: [0xB8, 0x40, 0x00, 0x00, 0x00, 0x8E, 0xD0, 0xBC, 0x80, 0x00, 0x00, 0x00, 0x8B, 0x44, 0x24, 0x7C,
                           0x8B, 0x44, 0x24, 0x7E],
                    exit: "io out 0x3c size 4 value 0x0", basedStack: true),
        // A bit offset in a register moves BT's operand: the moved operand is
        // checked against the segment (0x7C0 reaches 0xF8, inside; 0x800 reaches 0x100).
        // Offsets of 0x20000 and beyond leave the guest's RAM: an unchecked read there
        // is an MMIO exit, not the fault.
        SegmentCase(name: "BT m32,r32 whose bit offset reaches past the limit is #GP(0)",
                    code: [0xB8, 0x40, 0x00, 0x00, 0x00, 0x8E, 0xD8, 0xB9, 0xC0, 0x07, 0x00, 0x00, 0x0F, 0xA3, 0x0D,
                           0x00, 0x00, 0x00, 0x00, 0xB9, 0x00, 0x08, 0x00, 0x00, 0x0F, 0xA3, 0x0D, 0x00, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "BTS m32,r32 whose bit offset reaches past the limit is #GP(0)",
                    code: [0xB8, 0x40, 0x00, 0x00, 0x00, 0x8E, 0xD8, 0xB9, 0x00, 0x00, 0x10, 0x00, 0x0F, 0xAB, 0x0D,
                           0x00, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "BTS [esp],r32 whose bit offset reaches past SS's limit is #SS(0)",
                    code: [0xB8, 0x40, 0x00, 0x00, 0x00, 0x8E, 0xD0, 0xBC, 0x80, 0x00, 0x00, 0x00, 0xB9, 0x00, 0x00, 0x10,
                           0x00, 0x0F, 0xAB, 0x0C, 0x24],
                    exit: "io out 0x3c size 4 value 0x0", basedStack: true),
        SegmentCase(name: "XADD m32 without LOCK past the limit is #GP(0)",
                    code: [0xB8, 0x40, 0x00, 0x00, 0x00, 0x8E, 0xD8, 0x0F, 0xC1, 0x05, 0xFC, 0x00, 0x00, 0x00,
                           0x0F, 0xC1, 0x05, 0x00, 0x00, 0x02, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "CMPXCHG [esp+disp32] without LOCK past SS's limit is #SS(0)",
                    code: [0xB8, 0x40, 0x00, 0x00, 0x00, 0x8E, 0xD0, 0xBC, 0x80, 0x00, 0x00, 0x00, 0x0F, 0xB1, 0x8C, 0x24,
                           0x00, 0x00, 0x02, 0x00],
                    exit: "io out 0x3c size 4 value 0x0", basedStack: true),
        SegmentCase(name: "LOCK ADD m32 past the limit is #GP(0)",
                    code: [0xB8, 0x40, 0x00, 0x00, 0x00, 0x8E, 0xD8, 0xF0, 0x01, 0x05, 0x00, 0x01, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "CMPXCHG8B through a null DS is #GP(0)",
                    code: [0x31, 0xC0, 0x8E, 0xD8, 0x0F, 0xC7, 0x0D, 0x00, 0x00, 0x02, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "code segment into SS is #GP(selector)",
                    code: [0xB8, 0x08, 0x00, 0x00, 0x00, 0x8E, 0xD0],
                    exit: "io out 0x3d size 4 value 0x8"),
        SegmentCase(name: "user data and conforming code load into DS and ES; a TSS into FS is #GP(selector)",
                    code: [0xB8, 0x23, 0x00, 0x00, 0x00, 0x8E, 0xD8, 0xB8, 0x58, 0x00, 0x00, 0x00, 0x8E, 0xC0,
                           0xB8, 0x28, 0x00, 0x00, 0x00, 0x8E, 0xE0],
                    exit: "io out 0x3d size 4 value 0x28"),
        SegmentCase(name: "selector beyond the GDT is #GP(selector)",
                    code: [0xB8, 0x60, 0x00, 0x00, 0x00, 0x8E, 0xE8],
                    exit: "io out 0x3d size 4 value 0x60"),
        SegmentCase(name: "LLDT, a segment from the LDT, and one not present there (#NP)",
                    code: [0xB8, 0x38, 0x00, 0x00, 0x00, 0x0F, 0x00, 0xD0, 0xB8, 0x0C, 0x00, 0x00, 0x00, 0x8E, 0xD8,
                           0xA1, 0x00, 0x00, 0x00, 0x00, 0xBB, 0x14, 0x00, 0x00, 0x00, 0x8E, 0xC3],
                    exit: "io out 0x3b size 4 value 0x14"),
    ]

    @Test(arguments: cases)
    func segmentCheckMatchesHost(_ check: SegmentCase) throws {
        let ignored = check.basedStack ? [0..<0x100, 0xE000..<0xE100] : []
        let steps = try segmentGuest(check.code).expectSameOnHostAndSoftCPU(maxExits: 2, ignoringMemory: ignored)
        #expect(steps.first?.exit == check.exit)
    }
}

/// The segment checks of the wide memory operands (SSE, the x87
/// environment, FXSAVE), which the host's KVM cannot run at CPL 0: against
/// the SDM (#GP(0) for an operand that does not fit inside DS's limit).
/// DS is 0x40: base 0xE000, limit 0xFF.
@Suite("X86 segment checks of SSE and x87 memory operands")
struct WideOperandSegmentTests {
    static let cases: [SegmentCase] = [
        SegmentCase(name: "MOVUPS xmm0, [0xF8] (16 bytes past the limit)",
                    code: [0x0F, 0x10, 0x05, 0xF0, 0x00, 0x00, 0x00, 0x0F, 0x10, 0x05, 0xF8, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "MOVUPS [0xF8], xmm0", code: [0x0F, 0x11, 0x05, 0xF8, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "FNSTENV [0xF0] (28 bytes)", code: [0xD9, 0x35, 0xF0, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "FLDENV [0xF0] (28 bytes)", code: [0xD9, 0x25, 0xF0, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "FXSAVE [0xF0] (512 bytes)", code: [0x0F, 0xAE, 0x05, 0xF0, 0x00, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
        SegmentCase(name: "CLFLUSH [0x100]", code: [0x0F, 0xAE, 0x3D, 0x00, 0x01, 0x00, 0x00],
                    exit: "io out 0x3d size 4 value 0x0"),
    ]

    @Test(arguments: cases)
    func wideOperandPastTheLimitIsGeneralProtection(_ check: SegmentCase) {
        var g = segmentGuest([0xB8, 0x40, 0x00, 0x00, 0x00, 0x8E, 0xD8] + check.code)
        g.special.cr4 |= ControlBits.cr4OSFXSR
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == check.exit)
    }
}

@Suite("X86 descriptor instructions")
struct DescriptorInstructionTests {
    @Test func ltrMarksTheTSSBusyAndRefusesABusyOne() {
        // ltr ax (0x28) twice: the second sees a busy TSS.
        var g = segmentGuest([0xB8, 0x28, 0x00, 0x00, 0x00, 0x0F, 0x00, 0xD8, 0x0F, 0x00, 0xD8])
        g.special.tr = Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0xB, s: false)
        let run = g.runOnSoftCPU(maxExits: 1)
        #expect(run.steps.first?.exit == "io out 0x3d size 4 value 0x28")
        #expect(run.steps.first?.special.tr == Segment(base: UInt64(SystemGuest.tssAddress), limit: 0x67, selector: 0x28, type: 0xB, s: false))
        #expect(run.memory[SystemGuest.gdt + 0x28 + 5] == 0x8B, "busy in the GDT")
    }

    @Test func ltrAndLLDTNeedCPL0AndAreUndefinedInRealMode() {
        let real = Machine(.real, code: [0x0F, 0x00, 0xD8])
        #expect(real.run() == .exception(vector: 6, errorCode: nil))
        let user = Machine(.protected32, code: [0x0F, 0x00, 0xD0])
        user.cpu.state.cs.attributes |= 3 << 5
        #expect(user.run() == .exception(vector: 13, errorCode: 0))
    }

    @Test func sldtAndStrStoreTheSelectors() {
        // sldt eax; str ebx; sldt [0x2000]
        let m = Machine(.protected32, code: [0x0F, 0x00, 0xC0, 0x0F, 0x00, 0xCB, 0x0F, 0x00, 0x05, 0x00, 0x20, 0x00, 0x00, hlt])
        m.cpu.state.ldtr.selector = 0x38
        m.cpu.state.tr.selector = 0x28
        m[.rax] = ~0
        m.store64(0x2000, ~0)
        _ = m.run()
        #expect(m[.rax] == 0x38 && m[.rbx] == 0x28)
        #expect(m.load64(0x2000) == 0xFFFF_FFFF_FFFF_0038, "16 bits to memory")
    }

    /// lar eax, bx; lsl ecx, bx; verr bx; (ZF into DL) verw bx (ZF into DH).
    static let probeCode: [UInt8] = [0x0F, 0x02, 0xC3, 0x0F, 0x03, 0xCB, 0x0F, 0x00, 0xE3, 0x0F, 0x94, 0xC2,
                                     0x0F, 0x00, 0xEB, 0x0F, 0x94, 0xC6, 0xE6, 0x10, 0xF4]

    @Test(arguments: [
        // selector, LAR's EAX, LSL's ECX, VERR, VERW (rax/rcx stay 0x5A5A when refused)
        (UInt16(0x10), UInt64(0x00C0_9300), UInt64(0xFFFF_FFFF), true, true),
        (0x08, 0x00C0_9B00, 0xFFFF_FFFF, true, false),
        (0x28, 0x0000_8B00, 0x67, false, false),  // the busy TSS: LAR and LSL take it, VERR/VERW do not
        (0x30, 0x0000_EC00, 0x5A5A, false, false),  // the call gate: LAR only
        (0x40, 0x0040_9300, 0xFF, true, true),
        (0x50, 0x00C0_9100, 0xFFFF_FFFF, true, false),
        (0x00, 0x5A5A, 0x5A5A, false, false),
        (0x60, 0x5A5A, 0x5A5A, false, false),  // beyond the GDT: no fault, ZF clear
    ])
    func larLslVerrVerw(_ selector: UInt16, _ lar: UInt64, _ lsl: UInt64, _ readable: Bool, _ writable: Bool) {
        var g = segmentGuest(Self.probeCode)
        g.registers.rax = 0x5A5A
        g.registers.rcx = 0x5A5A
        g.registers.rbx = UInt64(selector)
        // The descriptors LAR reads back accessed: mark them so in the table as loads would.
        for offset in [0x08, 0x10, 0x40, 0x50] { g.memory[SystemGuest.gdt + offset + 5] |= 1 }
        g.memory[SystemGuest.gdt + 0x28 + 5] = 0x8B
        let r = g.runOnSoftCPU(maxExits: 1).steps.first?.registers
        #expect(r?.rax == lar, "LAR")
        #expect(r?.rcx == lsl, "LSL")
        #expect(r.map { $0.rdx & 0xFF == 1 } == readable, "VERR")
        #expect(r.map { ($0.rdx >> 8) & 0xFF == 1 } == writable, "VERW")
    }

    @Test func larSeesDPLAgainstCPLAndRPL() {
        var g = segmentGuest(Self.probeCode)
        g.registers.rax = 0x5A5A
        g.registers.rbx = 0x13  // the DPL-0 data segment with RPL 3
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.registers.rax == 0x5A5A)
    }

    @Test func arplRaisesTheRPL() {
        // arpl ax, bx twice: the first raises RPL 0 to 3 (ZF = 1), the second finds it raised (ZF = 0)
        let m = Machine(.protected32, code: [0x63, 0xD8, 0x0F, 0x94, 0xC1, 0x63, 0xD8, 0x0F, 0x94, 0xC5, hlt])
        m[.rax] = 0x10
        m[.rbx] = 0x23
        _ = m.run()
        #expect(m[.rax] == 0x13)
        #expect(m[.rcx] & 0xFFFF == 0x0001, "ZF set, then clear")
        let real = Machine(.real, code: [0x63, 0xD8])
        #expect(real.run() == .exception(vector: 6, errorCode: nil))
    }

    @Test func longModeAccessToANonCanonicalAddressIsGPOrSSThroughRSP() {
        // mov rax, [rbx]: #GP(0); mov rax, [rsp]: #SS(0)
        let m = Machine(.long64, code: [0x48, 0x8B, 0x03])
        m[.rbx] = 0x0000_8000_0000_0000
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
        let s = Machine(.long64, code: [0x48, 0x8B, 0x04, 0x24])
        s[.rsp] = 0x0000_8000_0000_0000
        #expect(s.run() == .exception(vector: 12, errorCode: 0))
    }
}
