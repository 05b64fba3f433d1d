import Testing
import KVM
@testable import X86

/// Paging outside long mode. 32-bit paging: the directory at 0x2000 maps
/// the first 4 MiB through the table at 0x3000 (user, writable 4 KiB pages,
/// but 0xE000 read-only and 0xF000 not present) and 0x400000 with one
/// 4 MiB page onto physical 0. PAE: the same through PDPT 0x2000, directory
/// 0x3000 (a 2 MiB page at 0x400000) and table 0x4000, 0xE000 also NX.
enum PagingMode: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case bits32, pae
    var testDescription: String { rawValue }
}

private func pagedGuest(_ mode: PagingMode, code: [UInt8]) -> SystemGuest {
    var g = SystemGuest.protected32(code: code + [0xE6, 0x10, 0xF4])
    let flags: UInt64 = 7
    func entry(_ page: Int) -> UInt64 {
        switch page {
        case 0xE: return 0xE000 | 5 | (mode == .pae ? 1 << 63 : 0)
        case 0xF: return 0
        default: return UInt64(page) << 12 | flags
        }
    }
    switch mode {
    case .bits32:
        g.store32(0x3000 | 7, at: 0x2000)
        g.store32(0x87, at: 0x2004)
        for page in 0..<32 { g.store32(UInt32(entry(page)), at: 0x3000 + page * 4) }
        g.special.cr4 = ControlBits.cr4PSE
    case .pae:
        g.store64(0x3000 | 1, at: 0x2000)
        g.store64(0x4000 | 7, at: 0x3000)
        g.store64(0x87, at: 0x3010)
        for page in 0..<32 { g.store64(entry(page), at: 0x4000 + page * 8) }
        g.special.cr4 = ControlBits.cr4PAE
        g.special.efer = ControlBits.eferNXE
    }
    g.special.cr3 = 0x2000
    g.special.cr0 = 0x8001_0011  // PG WP ET PE
    g.write([0x58, 0xE7, 0x3E, 0x0F, 0x20, 0xD0, 0xE7, 0x3F, 0xF4], at: SystemGuest.handlers + 0xE0)  // #PF: error code, CR2
    g.gate32(14, handler: UInt32(SystemGuest.handlers + 0xE0))
    return g
}

/// 32-bit and PAE paging, against the SDM: the host's kvm_pvm refuses
/// paging outside long mode (it shuts the guest down with CR0.PG clear),
/// so it is no oracle here.
@Suite("X86 legacy paging")
struct LegacyPagingTests {
    @Test(arguments: PagingMode.allCases)
    func largePageAliasReadsThroughTheSameFrames(_ mode: PagingMode) {
        // mov eax, [0x403000]; mov ebx, [0x40E000]
        let steps = pagedGuest(mode, code: [0xA1, 0x00, 0x30, 0x40, 0x00, 0x8B, 0x1D, 0x00, 0xE0, 0x40, 0x00])
            .runOnSoftCPU(maxExits: 2).steps
        // Physical 0x3000: the first page-table entry (32-bit), or the directory's first entry with its A bit (PAE).
        #expect(steps.first?.exit == (mode == .pae ? "io out 0x10 size 1 value 0x27" : "io out 0x10 size 1 value 0x7"))
        #expect(steps.first?.registers.rbx == 0, "0xE000 through the alias: readable")
    }

    @Test(arguments: PagingMode.allCases)
    func writeToAReadOnlyPageWithWPIsAPageFault(_ mode: PagingMode) {
        let steps = pagedGuest(mode, code: [0xA3, 0x00, 0xE0, 0x00, 0x00]).runOnSoftCPU(maxExits: 3).steps
        #expect(steps.map(\.exit).prefix(2) == ["io out 0x3e size 4 value 0x3", "io out 0x3f size 4 value 0xe000"])
    }

    @Test(arguments: PagingMode.allCases)
    func notPresentPageIsAPageFault(_ mode: PagingMode) {
        let steps = pagedGuest(mode, code: [0xA1, 0x00, 0xF0, 0x00, 0x00]).runOnSoftCPU(maxExits: 3).steps
        #expect(steps.first?.exit == "io out 0x3e size 4 value 0x0")
    }

    @Test(arguments: PagingMode.allCases)
    func writesSetAccessedAndDirtyBits(_ mode: PagingMode) {
        // mov [0x5004], eax; mov eax, [0x6000]
        let run = pagedGuest(mode, code: [0xA3, 0x04, 0x50, 0x00, 0x00, 0xA1, 0x00, 0x60, 0x00, 0x00]).runOnSoftCPU(maxExits: 2)
        let table = mode == .pae ? 0x4000 : 0x3000, size = mode == .pae ? 8 : 4
        #expect(run.memory[table + 5 * size] == 0x67, "written: A and D")
        #expect(run.memory[table + 6 * size] == 0x27, "read: A only")
        #expect(run.memory[table + 7 * size] == 0x07, "untouched")
        #expect(run.memory[mode == .pae ? 0x3000 : 0x2000] == 0x27, "the directory entry: A")
    }

    @Test func paeNoExecutePageIsAFetchFault() {
        // mov eax, 0xe000; jmp eax
        let steps = pagedGuest(.pae, code: [0xB8, 0x00, 0xE0, 0x00, 0x00, 0xFF, 0xE0]).runOnSoftCPU(maxExits: 3).steps
        #expect(steps.first?.exit == "io out 0x3e size 4 value 0x11")
    }
}

@Suite("X86 paging rules")
struct PagingRuleTests {
    @Test func movToCR3WithAReservedPDPTEBitIsGeneralProtection() {
        // mov eax, 0x2000; mov cr3, eax, with PDPTE 1 having bit 5 set
        var g = pagedGuest(.pae, code: [0xB8, 0x00, 0x20, 0x00, 0x00, 0x0F, 0x22, 0xD8])
        g.write([0x58, 0xE7, 0x3D, 0xF4], at: SystemGuest.handlers + 0xD0)
        g.gate32(13, handler: UInt32(SystemGuest.handlers + 0xD0))
        g.store64(0x7000 | 1 | 0x20, at: 0x2008)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3d size 4 value 0x0")
    }

    @Test func userAccessToASupervisorPageIsAPageFaultWithUS() {
        let m = Machine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x30, 0x00, 0x00])  // mov eax, [0x3000]
        m.store64(Machine.pageTable + 3 * 8, 0x3000 | 3)
        m.cpu.state.cs.attributes |= 3 << 5
        #expect(m.run() == .exception(vector: 14, errorCode: 5))
    }

    /// CR4.PGE: a global translation outlives a CR3 write (INVLPG drops
    /// it); a non-global one does not.
    @Test func globalPagesSurviveCR3Writes() {
        // mov eax, [0x5000]; mov eax, [0x6000]; (tables change) mov rbx, cr3; mov cr3, rbx; mov ecx, [0x5000]; mov edx, [0x6000]; invlpg [0x5000]; mov esi, [0x5000]
        let m = Machine(.long64, code: [
            0x8B, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, 0x8B, 0x04, 0x25, 0x00, 0x60, 0x00, 0x00, hlt,
            0x0F, 0x20, 0xDB, 0x0F, 0x22, 0xDB,
            0x8B, 0x0C, 0x25, 0x00, 0x50, 0x00, 0x00, 0x8B, 0x14, 0x25, 0x00, 0x60, 0x00, 0x00,
            0x0F, 0x01, 0x3C, 0x25, 0x00, 0x50, 0x00, 0x00, 0x8B, 0x34, 0x25, 0x00, 0x50, 0x00, 0x00, hlt,
        ])
        m.cpu.state.cr4 |= ControlBits.cr4PGE
        m.store64(Machine.pageTable + 5 * 8, 0x5000 | 0x107)  // global
        m.store64(0x5000, 0x55)
        m.store64(0x6000, 0x66)
        m.store64(0x7000, 0x77)
        #expect(m.run() == .halt)
        // Both pages now point at 0x7000, without INVLPG.
        m.store64(Machine.pageTable + 5 * 8, 0x7000 | 0x107)
        m.store64(Machine.pageTable + 6 * 8, 0x7000 | 7)
        #expect(m.run() == .halt)
        #expect(m[.rcx] == 0x55, "the global entry is still cached")
        #expect(m[.rdx] == 0x77, "the CR3 write dropped the other")
        #expect(m[.rsi] == 0x77, "INVLPG drops global entries too")
    }
}

@Suite("X86 debug registers")
struct DebugRegisterTests {
    @Test func movToAndFromDebugRegistersKeepsFixedBits() {
        // mov rax, 0x1234; mov dr0, rax; mov dr7, rax; mov rbx, dr7; mov rcx, dr6; mov rdx, dr0; mov rsi, dr5 (DR7)
        let m = Machine(.long64, code: [
            0x48, 0xC7, 0xC0, 0x34, 0x12, 0x00, 0x00, 0x0F, 0x23, 0xC0, 0x0F, 0x23, 0xF8,
            0x0F, 0x21, 0xFB, 0x0F, 0x21, 0xF1, 0x0F, 0x21, 0xC2, 0x0F, 0x21, 0xEE, hlt,
        ])
        #expect(m.run() == .halt)
        #expect(m[.rdx] == 0x1234)
        #expect(m[.rbx] == 0x634 && m[.rsi] == m[.rbx], "DR7 without reserved bit 12, with fixed bit 10; DR5 aliases it")
        #expect(m[.rcx] == 0xFFFF_0FF0)
        #expect(m.cpu.state.debugRegisters.dr7 == 0x634)
    }

    @Test func debugRegisterRulesFault() {
        // DR4 with CR4.DE: #UD
        let de = Machine(.long64, code: [0x0F, 0x21, 0xE0])
        de.cpu.state.cr4 |= ControlBits.cr4DE
        #expect(de.run() == .exception(vector: 6, errorCode: nil))
        // At CPL 3: #GP(0)
        let user = Machine(.long64, code: [0x0F, 0x21, 0xF8])
        user.cpu.state.cs.attributes |= 3 << 5
        #expect(user.run() == .exception(vector: 13, errorCode: 0))
        // An upper half in DR7: #GP(0)
        let high = Machine(.long64, code: [0x0F, 0x23, 0xF8])
        high[.rax] = 1 << 32
        #expect(high.run() == .exception(vector: 13, errorCode: 0))
    }

    @Test func cltsClearsTSAndWbinvdIsPrivileged() {
        let m = Machine(.protected32, code: [0x0F, 0x06, 0x0F, 0x09, 0x0F, 0x08, hlt])
        m.cpu.state.cr0 |= ControlBits.cr0TS
        #expect(m.run() == .halt)
        #expect(m.cpu.state.cr0 & ControlBits.cr0TS == 0)
        let user = Machine(.protected32, code: [0x0F, 0x09])
        user.cpu.state.cs.attributes |= 3 << 5
        #expect(user.run() == .exception(vector: 13, errorCode: 0))
    }
}
