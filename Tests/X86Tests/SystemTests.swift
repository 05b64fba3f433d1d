import Testing
@testable import X86

/// A GDT at 0x500: null, 32-bit code (0x08), data (0x10), 64-bit code (0x18),
/// a not-present code segment (0x20) and a data segment used as code (0x28).
private func writeGDT(_ m: Machine) {
    let descriptors: [UInt64] = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00AF_9B00_0000_FFFF,
                                 0x00CF_1B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
    for (i, d) in descriptors.enumerated() { m.store64(0x500 + UInt64(i * 8), d) }
    m.cpu.state.gdtr = DescriptorTableRegister(base: 0x500, limit: UInt16(descriptors.count * 8 - 1))
}

@Suite("X86 system instructions")
struct SystemInstructionTests {
    @Test func lgdtAndLidtLoadLimitAndBase() {
        // lgdt [0x2000]; lidt [0x2010]; sgdt [0x2020]; hlt (16-bit operand size keeps 24 bits of base)
        let m = Machine(code: [0x0F, 0x01, 0x16, 0x00, 0x20, 0x0F, 0x01, 0x1E, 0x10, 0x20, 0x0F, 0x01, 0x06, 0x20, 0x20, hlt])
        m.write([0x17, 0x00, 0x00, 0x05, 0x00, 0xAA], at: 0x2000)
        m.write([0xFF, 0x03, 0x00, 0x10, 0x02, 0x00], at: 0x2010)
        #expect(m.run() == .halt)
        #expect(m.cpu.state.gdtr == DescriptorTableRegister(base: 0xAA00_0500 & 0xFF_FFFF, limit: 0x17))
        #expect(m.cpu.state.idtr == DescriptorTableRegister(base: 0x2_1000, limit: 0x3FF))
        #expect(m.load64(0x2020) & 0xFFFF_FFFF_FFFF == 0x0000_0500_0017)
    }

    @Test func lgdtAtCPL3IsGeneralProtection() {
        let m = Machine(.protected32, code: [0x0F, 0x01, 0x15, 0x00, 0x20, 0x00, 0x00, hlt])
        m.cpu.state.cs.attributes |= 3 << 5
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
    }

    @Test func movToAndFromControlRegisters() {
        // mov eax, cr0; or eax, 1... in 32-bit code: mov ebx, 0x5000; mov cr3, ebx; mov ecx, cr3; mov cr4, ebx(bad)
        let m = Machine(.protected32, code: [
            0x0F, 0x20, 0xC0,              // mov eax, cr0
            0xBB, 0x00, 0x50, 0x00, 0x00,  // mov ebx, 0x5000
            0x0F, 0x22, 0xDB,              // mov cr3, ebx
            0x0F, 0x20, 0xD9,              // mov ecx, cr3
            0x0F, 0x22, 0xE3,              // mov cr4, ebx: bit 12 and 14 are not writable
        ])
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
        #expect(m[.rax] == m.cpu.state.cr0)
        #expect(m[.rcx] == 0x5000)
        #expect(m.cpu.state.cr3 == 0x5000)
        #expect(m.cpu.state.rip == Machine.codeAddress + 14)
    }

    @Test func movToCR1IsUndefined() {
        let m = Machine(.protected32, code: [0x0F, 0x22, 0xC8])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }

    @Test func pagingWithLMEEntersLongModeAndNeedsPAE() {
        // mov eax, cr0; or eax, 0x80000000; mov cr0, eax; hlt
        let code: [UInt8] = [0x0F, 0x20, 0xC0, 0x0D, 0x00, 0x00, 0x00, 0x80, 0x0F, 0x22, 0xC0, hlt]
        let without = Machine(.protected32, code: code)
        without.cpu.state.efer = ControlBits.eferLME
        #expect(without.run() == .exception(vector: 13, errorCode: 0))
        let with = Machine(.protected32, code: code)
        with.cpu.state.efer = ControlBits.eferLME
        with.cpu.state.cr4 = ControlBits.cr4PAE
        with.cpu.state.cr3 = 0x10000
        with.store64(0x10000, 0x11000 | 3)
        with.store64(0x11000, 0x12000 | 3)
        with.store64(0x12000, 0x83)
        #expect(with.run() == .halt)
        #expect(with.cpu.state.efer & ControlBits.eferLMA != 0)
        #expect(with.cpu.state.mode == .compatibility32)
    }

    @Test func rdmsrAndWrmsrOfEFER() {
        // mov ecx, 0xc0000080; rdmsr; or eax, 0x100; wrmsr; rdmsr; hlt
        let m = Machine(.protected32, code: [0xB9, 0x80, 0x00, 0x00, 0xC0, 0x0F, 0x32, 0x0D, 0x00, 0x01, 0x00, 0x00,
                                             0x0F, 0x30, 0x0F, 0x32, hlt])
        #expect(m.run() == .halt)
        #expect(m.cpu.state.efer == ControlBits.eferLME)
        #expect(m[.rax] == 0x100 && m[.rdx] == 0)
    }

    @Test func unknownMSRAndReservedEFERBitsAreGeneralProtection() {
        let unknown = Machine(.protected32, code: [0xB9, 0x78, 0x56, 0x34, 0x12, 0x0F, 0x32])
        #expect(unknown.run() == .exception(vector: 13, errorCode: 0))
        // mov ecx, EFER; mov eax, 2; xor edx, edx; wrmsr
        let reserved = Machine(.protected32, code: [0xB9, 0x80, 0x00, 0x00, 0xC0, 0xB8, 0x02, 0x00, 0x00, 0x00,
                                                    0x31, 0xD2, 0x0F, 0x30])
        #expect(reserved.run() == .exception(vector: 13, errorCode: 0))
        #expect(reserved.cpu.state.efer == 0)
    }

    @Test func nonCanonicalFSBaseIsRefused() {
        var cpu = Machine(.long64, code: []).cpu
        let refused = cpu.writeMSR(MSR.fsBase, 0x0000_8000_0000_0000)
        let accepted = cpu.writeMSR(MSR.fsBase, 0xFFFF_8000_0000_0000)
        #expect(!refused)
        #expect(accepted)
        #expect(cpu.state.fs.base == 0xFFFF_8000_0000_0000)
    }

    @Test func cpuidAnswersFromTheTableWithKVMsOutOfRangeRule() {
        let m = Machine(code: [0x0F, 0xA2, hlt])
        m.cpu.cpuid = [
            CPUIDLeaf(function: 0, eax: 2, ebx: 0x756E_6547, ecx: 0x6C65_746E, edx: 0x4965_6E69),
            CPUIDLeaf(function: 2, eax: 0x22, ebx: 0x33),
            CPUIDLeaf(function: 4, index: 1, significantIndex: true, eax: 0x41),
            CPUIDLeaf(function: 0x8000_0000, eax: 0x8000_0001),
        ]
        #expect(m.cpu.cpuidLeaf(function: 2, index: 0).eax == 0x22)
        #expect(m.cpu.cpuidLeaf(function: 1, index: 0) == CPUIDLeaf(function: 1), "in range, not in the table: zeros")
        #expect(m.cpu.cpuidLeaf(function: 9, index: 0).eax == 0x22, "above the highest basic leaf: the highest basic leaf")
        #expect(m.cpu.cpuidLeaf(function: 0x8000_0005, index: 0).eax == 0x22, "above the highest extended leaf")
        #expect(m.cpu.cpuidLeaf(function: 4, index: 1).eax == 0x41)
        #expect(m.cpu.cpuidLeaf(function: 4, index: 0).eax == 0x22, "4 is above the highest basic leaf (2) too")
        m[.rax] = 0
        #expect(m.run() == .halt)
        #expect(m[.rax] == 2 && m[.rbx] == 0x756E_6547 && m[.rcx] == 0x6C65_746E && m[.rdx] == 0x4965_6E69)
    }

    @Test func cpuidOfAnAMDVendorGivesZerosOutOfRange() {
        let m = Machine(code: [])
        m.cpu.cpuid = [CPUIDLeaf(function: 0, eax: 1, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65),
                       CPUIDLeaf(function: 1, eax: 0x77)]
        #expect(m.cpu.cpuidLeaf(function: 7, index: 0).eax == 0)
    }

    @Test func farJumpFromRealToProtectedToLongMode() {
        // Real mode: mov eax, cr0; or al, 1; mov cr0, eax; jmp 0x08:0x1020
        let m = Machine(code: [0x0F, 0x20, 0xC0, 0x0C, 0x01, 0x0F, 0x22, 0xC0, 0x66, 0xEA, 0x20, 0x10, 0x00, 0x00, 0x08, 0x00])
        writeGDT(m)
        // 32-bit at 0x1020: enable long mode (page tables of Machine's long set-up are not there, so map 2 MiB).
        m.store64(0x10000, 0x11000 | 3)
        m.store64(0x11000, 0x12000 | 3)
        m.store64(0x12000, 0x83)
        m.write([
            0xB8, 0x00, 0x00, 0x01, 0x00, 0x0F, 0x22, 0xD8,  // mov eax, 0x10000; mov cr3, eax
            0x0F, 0x20, 0xE0, 0x0C, 0x20, 0x0F, 0x22, 0xE0,  // mov eax, cr4; or al, 0x20; mov cr4, eax
            0xB9, 0x80, 0x00, 0x00, 0xC0, 0x0F, 0x32,        // mov ecx, EFER; rdmsr
            0x0D, 0x00, 0x01, 0x00, 0x00, 0x0F, 0x30,        // or eax, 0x100; wrmsr
            0x0F, 0x20, 0xC0, 0x0D, 0x00, 0x00, 0x00, 0x80, 0x0F, 0x22, 0xC0,  // paging on
            0xEA, 0x00, 0x11, 0x00, 0x00, 0x18, 0x00,        // jmp 0x18:0x1100
        ], at: 0x1020)
        m.write([0x48, 0xB8, 1, 2, 3, 4, 5, 6, 7, 8, hlt], at: 0x1100)  // mov rax, imm64; hlt
        #expect(m.run() == .halt)
        #expect(m.cpu.state.mode == .long64)
        #expect(m[.rax] == 0x0807_0605_0403_0201)
        #expect(m.cpu.state.cs.selector == 0x18)
    }

    @Test func farJumpToANotPresentOrDataSegmentFaults() {
        let notPresent = Machine(.protected32, code: [0xEA, 0x00, 0x20, 0x00, 0x00, 0x20, 0x00])
        writeGDT(notPresent)
        #expect(notPresent.run() == .exception(vector: 11, errorCode: 0x20))
        let data = Machine(.protected32, code: [0xEA, 0x00, 0x20, 0x00, 0x00, 0x10, 0x00])
        writeGDT(data)
        #expect(data.run() == .exception(vector: 13, errorCode: 0x10))
    }

    @Test func bitTestFamily() {
        let m = Machine(.protected32, code: [
            0xB8, 0x05, 0x00, 0x00, 0x80,  // mov eax, 0x80000005
            0x0F, 0xBA, 0xE0, 0x1F,        // bt eax, 31
            0x9C,                          // pushfd
            0x0F, 0xBA, 0xE8, 0x01,        // bts eax, 1
            0x0F, 0xBA, 0xF0, 0x00,        // btr eax, 0
            0x0F, 0xBA, 0xF8, 0x02,        // btc eax, 2
            0xBB, 0x23, 0x00, 0x00, 0x00,  // mov ebx, 35
            0x0F, 0xAB, 0x1D, 0x00, 0x30, 0x00, 0x00,  // bts [0x3000], ebx: bit 3 of the dword at 0x3004
            hlt,
        ])
        #expect(m.run() == .halt)
        #expect(m.load64(0x7FFC) & RFLAGS.cf != 0, "CF from bit 31")
        #expect(m[.rax] == 0x8000_0002)
        #expect(m.load64(0x3000) == 0x8 << 32)
        #expect(m.flags & RFLAGS.cf == 0, "bit 35 was clear")
    }
}

@Suite("X86 port string I/O")
struct PortStringTests {
    @Test func repOutsbGivesOneExitPerByte() {
        // mov si, 0x2000; mov cx, 3; mov dx, 0x3f8; rep outsb; hlt
        let m = Machine(code: [0xBE, 0x00, 0x20, 0xB9, 0x03, 0x00, 0xBA, 0xF8, 0x03, 0xF3, 0x6E, hlt])
        m.write([0x61, 0x62, 0x63], at: 0x2000)
        var bytes: [UInt64] = []
        while case .io(let io) = m.run() {
            #expect(io.isWrite && io.port == 0x3F8 && io.count == 1)
            bytes.append(io.data)
        }
        #expect(bytes == [0x61, 0x62, 0x63])
        #expect(m[.rcx] == 0 && m[.rsi] == 0x2003)
    }

    @Test func repInswAsksForTheWholePageAtOnce() {
        // mov di, 0x3ffc; mov cx, 5; mov dx, 0x60; rep insw; hlt: two words fit before the page ends
        let m = Machine(code: [0xBF, 0xFC, 0x3F, 0xB9, 0x05, 0x00, 0xBA, 0x60, 0x00, 0xF3, 0x6D, hlt])
        var counts: [Int] = []
        var next: UInt8 = 1
        while case .io(let io) = m.run() {
            #expect(!io.isWrite && io.size == 2)
            counts.append(io.count)
            let bytes = (0..<io.count * 2).map { _ in defer { next += 1 }; return next }
            bytes.withUnsafeBytes { m.cpu.completeStringInput($0) }
        }
        #expect(counts.first == 4, "KVM's rule: bytes left in the page, compared with the element count")
        #expect(counts.reduce(0, +) == 5)
        #expect(m.load64(0x3FFC) & 0xFFFF_FFFF == 0x0403_0201)
        #expect(m[.rcx] == 0 && m[.rdi] == 0x3FFC + 10)
    }
}

@Suite("X86 physical memory ranges")
struct PhysicalRangeTests {
    @Test func readOnlyRangeTurnsWritesIntoMMIOAndLogsNothing() {
        let m = Machine(code: [0xA0, 0x00, 0x00, 0xC6, 0x06, 0x00, 0x00, 0x99, hlt])  // mov al, [0]; mov byte [0], 0x99
        let rom = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { rom.deallocate() }
        rom.storeBytes(of: 0x5C as UInt8, as: UInt8.self)
        m.cpu.memory = PhysicalMemory(ranges: [
            PhysicalRange(guestAddress: 0, size: 0x10000, host: m.memory),
            PhysicalRange(guestAddress: 0x2_0000, size: 4096, host: rom, readOnly: true),
        ])
        m.cpu.state.ds = .realMode(selector: 0x2000)
        #expect(m.run() == .mmio(MMIOExit(address: 0x2_0000, size: 1, isWrite: true, data: 0x99)))
        #expect(m[.rax] & 0xFF == 0x5C)
        #expect(rom.load(as: UInt8.self) == 0x5C)
        #expect(m.run() == .halt, "the write is done: the guest goes on")
    }

    @Test func rangesAboveRAMAreFoundAndGapsAreMMIO() {
        // mov ax, 0xf000; mov ds, ax; mov al, [0xfff0]; mov byte [0], 1 (a gap); hlt
        let m = Machine(code: [0xB8, 0x00, 0xF0, 0x8E, 0xD8, 0xA0, 0xF0, 0xFF, 0xC6, 0x06, 0x00, 0x00, 0x01, hlt])
        let high = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { high.deallocate() }
        high.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        high.storeBytes(of: 0x77 as UInt8, toByteOffset: 0xFF0, as: UInt8.self)
        let dirty = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        defer { dirty.deallocate() }
        dirty.pointee = 0
        m.cpu.memory = PhysicalMemory(ranges: [
            PhysicalRange(guestAddress: 0xFF000, size: 4096, host: high, readOnly: true),
            PhysicalRange(guestAddress: 0, size: 0x10000, host: m.memory, dirtyBitmap: dirty),
        ])
        #expect(m.run() == .mmio(MMIOExit(address: 0xF_0000, size: 1, isWrite: true, data: 1)))
        #expect(m[.rax] & 0xFF == 0x77)
        #expect(dirty.pointee == 0, "nothing written in RAM yet")
    }

    @Test func writesMarkTheirPagesDirty() {
        // mov byte [0x3000], 1; mov word [0x4fff], 2 (across pages 4 and 5); hlt
        let m = Machine(code: [0xC6, 0x06, 0x00, 0x30, 0x01, 0xC7, 0x06, 0xFF, 0x4F, 0x02, 0x00, hlt])
        let dirty = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
        defer { dirty.deallocate() }
        dirty.initialize(repeating: 0, count: 4)
        m.cpu.memory = PhysicalMemory(ranges: [PhysicalRange(guestAddress: 0, size: 0x10_0000, host: m.memory, dirtyBitmap: dirty)])
        #expect(m.run() == .halt)
        #expect(dirty[0] == 1 << 3 | 1 << 4 | 1 << 5)
    }
}

@Suite("X86 exception delivery")
struct DeliveryTests {
    @Test func realModeFaultUsesTheIVT() {
        let m = Machine(code: [0x0F, 0x0B])  // ud2
        m.cpu.deliversExceptions = true
        m.store64(6 * 4, 0x0000_2000)
        m.write([hlt], at: 0x2000)
        m.cpu.state.rflags = 0x202
        #expect(m.run() == .halt)
        #expect(m[.rsp] == 0x8000 - 6)
        #expect(m.load64(0x7FFA) & 0xFFFF_FFFF_FFFF == 0x0202_0000_1000, "IP, CS, FLAGS")
        #expect(m.cpu.state.rflags & RFLAGS.if == 0)
    }

    @Test func longModePageFaultPushesItsFrame() {
        // mov rax, [0x200000]: beyond the 1 MiB mapped; the #PF handler halts
        let m = Machine(.long64, code: [0x48, 0x8B, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00])
        m.cpu.deliversExceptions = true
        m.store64(0x500, 0)
        m.store64(0x508, 0x0020_9B00_0000_0000)  // 64-bit code at 8
        m.cpu.state.gdtr = DescriptorTableRegister(base: 0x500, limit: 15)
        let handler: UInt64 = 0x2000
        m.store64(0x600 + 14 * 16, (handler & 0xFFFF) | 8 << 16 | 0x8E << 40 | (handler >> 16 & 0xFFFF) << 48)
        m.store64(0x608 + 14 * 16, handler >> 32)
        m.cpu.state.idtr = DescriptorTableRegister(base: 0x600, limit: 0xFFF)
        m.write([hlt], at: handler)
        #expect(m.run() == .halt)
        #expect(m.cpu.state.cr2 == 0x20_0000)
        #expect(m[.rsp] == 0x8000 - 48)
        #expect(m.load64(0x8000 - 48) == 0, "error code: not present, read, supervisor")
        #expect(m.load64(0x8000 - 40) == Machine.codeAddress)
        #expect(m.load64(0x8000 - 32) == 8)
        #expect(m.load64(0x8000 - 24) & RFLAGS.rf != 0)
        #expect(m.load64(0x8000 - 16) == 0x8000)
    }

    @Test func faultWithNoIDTIsATripleFault() {
        let m = Machine(.protected32, code: [0x0F, 0x0B])
        m.cpu.deliversExceptions = true
        m.cpu.state.idtr = DescriptorTableRegister(base: 0, limit: 0)
        #expect(m.run() == .shutdown)
        #expect(m.cpu.state.rip == Machine.codeAddress)
    }

    @Test func intAndIretInProtectedMode() {
        // int 0x40; hlt — the handler: mov eax, 7; iretd
        let m = Machine(.protected32, code: [0xCD, 0x40, hlt])
        m.cpu.deliversExceptions = true
        writeGDT(m)
        m.store64(0x600 + 0x40 * 8, 0x2000 | 8 << 16 | 0x8E << 40)
        m.cpu.state.idtr = DescriptorTableRegister(base: 0x600, limit: 0x7FF)
        m.write([0xB8, 0x07, 0x00, 0x00, 0x00, 0xCF], at: 0x2000)
        m.cpu.state.rflags = 0x202
        #expect(m.run() == .halt)
        #expect(m[.rax] == 7)
        #expect(m[.rsp] == 0x8000)
        #expect(m.cpu.state.rflags & RFLAGS.if != 0, "IRET restores IF")
        #expect(m.cpu.state.rip == Machine.codeAddress + 3)
    }
}

@Suite("X86 resume flag")
struct ResumeFlagTests {
    /// IRET loads RF from the frame; the instruction after it clears it.
    @Test func rfLoadedByIRETLastsOneInstruction() {
        // iretd to 0x1010: nop; hlt
        let m = Machine(.protected32, code: [0xCF])
        writeGDT(m)
        m.cpu.state[.rsp] = 0x7FF4
        m.store64(0x7FF4, 0x0000_0008_0000_1010)  // EIP, CS
        m.store64(0x7FFC, 0x1_0002)                // EFLAGS with RF
        m.write([0x90, hlt], at: 0x1010)
        #expect(m.cpu.step() == .instructionLimit)
        #expect(m.cpu.state.rflags & RFLAGS.rf != 0)
        #expect(m.cpu.step() == .instructionLimit)
        #expect(m.cpu.state.rflags & RFLAGS.rf == 0)
    }
}

@Suite("X86 external interrupts")
struct ExternalInterruptTests {
    @Test func externalInterruptUsesTheGateAndReturnsToTheInterruptedInstruction() {
        let m = Machine(.protected32, code: [hlt])
        writeGDT(m)
        m.store64(0x600 + 0x30 * 8, 0x2000 | 8 << 16 | 0x8E << 40)
        m.cpu.state.idtr = DescriptorTableRegister(base: 0x600, limit: 0x7FF)
        m.cpu.state.rflags = 0x202
        #expect(m.cpu.interruptsEnabled)
        #expect(m.cpu.deliverExternalInterrupt(0x30) == nil)
        #expect(m.cpu.state.rip == 0x2000)
        #expect(!m.cpu.interruptsEnabled, "an interrupt gate clears IF")
        #expect(m[.rsp] == 0x8000 - 12, "EIP, CS, EFLAGS: no error code")
        #expect(m.load64(0x8000 - 12) & 0xFFFF_FFFF == Machine.codeAddress)
    }

    @Test func stiThatSetsIFAndSSLoadsHoldOffInterruptsForOneInstruction() {
        // sti; nop; sti; mov ss, ax; nop; pop ss; nop
        let m = Machine(.real, code: [0xFB, 0x90, 0xFB, 0x8E, 0xD0, 0x90, 0x17, 0x90])
        m.cpu.state.rflags = 0x2
        var enabled: [Bool] = []
        for _ in 0..<7 {
            #expect(m.cpu.step() == .instructionLimit)
            enabled.append(m.cpu.interruptsEnabled)
        }
        // An STI with IF already set opens no shadow.
        #expect(enabled == [false, true, true, false, true, false, true])
    }

    @Test func externalInterruptWithoutAGateEndsInShutdown() {
        let m = Machine(.protected32, code: [hlt])
        m.cpu.state.idtr = DescriptorTableRegister(base: 0x600, limit: 0)
        #expect(m.cpu.deliverExternalInterrupt(0x30) == .shutdown)
    }
}
