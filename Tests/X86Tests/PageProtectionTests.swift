import KVM
import Testing
@testable import X86

/// Guests for the page-walk tests: the 64-bit set-up of SystemGuest with a
/// #PF (and #GP) handler at 0xD300 that reports the error code on port
/// 0x50 and CR2 on port 0x51, then halts. `load` runs at CPL 0, or at CPL 3
/// from 0xC000 when `user` (its closing HLT is then a #GP with error code 0,
/// which says that the load did not fault).
enum PageWalkGuest {
    static let handler = SystemGuest.handlers + 0x300

    static func long64(user: Bool, load: [UInt8]) -> SystemGuest {
        var g = SystemGuest.long64(code: user ? PrivilegeDifferentialTests.enterUser64 : load + [0xF4])
        if user { g.write(load + [0xF4], at: SystemGuest.userCode) }
        g.write([
            0x58, 0xE7, 0x50,              // pop rax (error code); out 0x50, eax
            0x0F, 0x20, 0xD0, 0xE7, 0x51,  // mov rax, cr2; out 0x51, eax
            0xF4,                          // hlt
        ], at: handler)
        g.gate64(14, handler: UInt64(handler))
        g.gate64(13, handler: UInt64(handler))
        return g
    }

    /// mov rax, [0x1F000]: the page whose PTE the tests change.
    static let loadPage1F: [UInt8] = [0x48, 0x8B, 0x04, 0x25, 0x00, 0xF0, 0x01, 0x00]
    static let page1FEntry = 0x5000 + 0x1F * 8

    /// mov rax, [0x8000001000], through PML4[1] -> PDPT 0x10000 -> PD
    /// 0x11000 -> PT 0x12000, tables no walk has used yet (A bits clear).
    static let loadFreshTables: [UInt8] = [0x48, 0xA1, 0x00, 0x10, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00]

    static func withFreshTables(_ g: inout SystemGuest, leaf: UInt64) {
        g.store64(0x10000 | 7, at: 0x2008)
        g.store64(0x11000 | 7, at: 0x10000)
        g.store64(0x12000 | 7, at: 0x11000)
        g.store64(leaf, at: 0x12008)
    }

    /// A guest CPUID with long mode, NX and `physicalBits` of physical address.
    static func cpuid(physicalBits: UInt32) -> [CPUIDEntry] {
        [CPUIDEntry(function: 0x8000_0000, eax: 0x8000_0008),
         CPUIDEntry(function: 0x8000_0001, edx: 1 << 11 | 1 << 20 | 1 << 29),
         CPUIDEntry(function: 0x8000_0008, eax: 0x3000 | physicalBits)]
    }

    static func faultExit(_ code: UInt32) -> String { "io out 0x50 size 4 value \(hex(code))" }
    static let noFault = [faultExit(0), "io out 0x51 size 4 value 0x0", "halt"]
}

/// Reserved bits of 4-level paging entries against the host, whose KVM
/// walks the guest's tables both for its emulator (CPL 0) and for its
/// shadow page tables (CPL 3 runs natively): MAXPHYADDR from the guest's
/// CPUID (36 without one), NX without EFER.NXE, PS in a PML4E, PS in a
/// PDPTE without 1 GiB pages in the CPUID, the low bits of a 2 MiB page.
/// The fault is #PF with P and RSVD set, and a walk that fails sets no
/// accessed bit.
@Suite("X86 reserved page-table bits against the host", .enabled(if: HostKVM.isAvailable))
struct ReservedBitDifferentialTests {
    static let reservedBits: [UInt64] = [1 << 36, 1 << 40, 1 << 51, 1 << 63]

    @Test(arguments: [false, true], reservedBits)
    func bitAboveMaxPhysicalAddressOrNXWithoutNXEIsReserved(user: Bool, bit: UInt64) throws {
        var g = PageWalkGuest.long64(user: user, load: PageWalkGuest.loadPage1F)
        g.store64(0x1F000 | 7 | bit, at: PageWalkGuest.page1FEntry)
        let steps = try g.expectSameOnHostAndSoftCPU()
        #expect(steps.map(\.exit) == [PageWalkGuest.faultExit(user ? 0xD : 0x9), "io out 0x51 size 4 value 0x1f000", "halt"])
    }

    /// Bits 52-62 are ignored in 4-level paging (they are reserved in PAE paging).
    @Test(arguments: [false, true], [UInt64(1) << 52, 1 << 62])
    func bitsFiftyTwoToSixtyTwoAreIgnored(user: Bool, bit: UInt64) throws {
        var g = PageWalkGuest.long64(user: user, load: PageWalkGuest.loadPage1F)
        g.store64(0x1F000 | 7 | bit, at: PageWalkGuest.page1FEntry)
        let steps = try g.expectSameOnHostAndSoftCPU()
        #expect(steps.map(\.exit) == (user ? PageWalkGuest.noFault : ["halt"]))
    }

    @Test(arguments: [false, true])
    func psInAPML4EntryIsReserved(user: Bool) throws {
        var g = PageWalkGuest.long64(user: user, load: PageWalkGuest.loadFreshTables)
        g.store64(0x87, at: 0x2008)
        let steps = try g.expectSameOnHostAndSoftCPU()
        #expect(steps.first?.exit == PageWalkGuest.faultExit(user ? 0xD : 0x9))
    }

    @Test(arguments: [false, true])
    func gigabytePageWithoutPage1GBInTheCPUIDIsReserved(user: Bool) throws {
        var g = PageWalkGuest.long64(user: user, load: PageWalkGuest.loadFreshTables)
        g.store64(0x10000 | 7, at: 0x2008)
        g.store64(0x87, at: 0x10000)
        let steps = try g.expectSameOnHostAndSoftCPU()
        #expect(steps.first?.exit == PageWalkGuest.faultExit(user ? 0xD : 0x9))
    }

    @Test(arguments: [false, true])
    func lowBitsOfATwoMegabytePageAreReserved(user: Bool) throws {
        // mov rax, [0x201000] through PD[1], a 2 MiB page with bit 13 set
        var g = PageWalkGuest.long64(user: user, load: [0x48, 0x8B, 0x04, 0x25, 0x00, 0x10, 0x20, 0x00])
        g.store64(0x87 | 1 << 13, at: 0x4008)
        let steps = try g.expectSameOnHostAndSoftCPU()
        #expect(steps.map(\.exit) == [PageWalkGuest.faultExit(user ? 0xD : 0x9), "io out 0x51 size 4 value 0x201000", "halt"])
    }

    /// The guest's CPUID sets MAXPHYADDR: with 40 bits, bit 40 is reserved
    /// and bit 39 is an address (outside RAM: MMIO).
    @Test func maxPhysicalAddressComesFromTheGuestsCPUID() throws {
        var reserved = PageWalkGuest.long64(user: false, load: PageWalkGuest.loadPage1F)
        reserved.cpuid = PageWalkGuest.cpuid(physicalBits: 40)
        reserved.store64(0x1F000 | 7 | 1 << 40, at: PageWalkGuest.page1FEntry)
        #expect(try reserved.expectSameOnHostAndSoftCPU().first?.exit == PageWalkGuest.faultExit(0x9))

        var address = reserved
        address.store64(0x1F000 | 7 | 1 << 39, at: PageWalkGuest.page1FEntry)
        #expect(try address.expectSameOnHostAndSoftCPU().first?.exit == "mmio read 0x800001f000 size 8")
    }

    /// A walk that ends in a reserved-bit, not-present or protection fault
    /// leaves the A bits of the entries it went through clear; one that
    /// succeeds sets them all, and D in the last for a write (memory is
    /// compared with the host's).
    @Test(arguments: [false, true], [UInt64(0x1F000 | 7 | 1 << 40), 0x1F006, 0x1F007, 0x1F003, 0x1F005])
    func onlyASuccessfulWalkSetsAccessedBits(user: Bool, leaf: UInt64) throws {
        for write in [false, true] {
            // mov rax, [0x8000001000] or mov [0x8000001000], rax
            var load = PageWalkGuest.loadFreshTables
            if write { load[1] = 0xA3 }
            var g = PageWalkGuest.long64(user: user, load: load)
            g.special.cr0 |= ControlBits.cr0WP
            PageWalkGuest.withFreshTables(&g, leaf: leaf)
            let steps = try g.expectSameOnHostAndSoftCPU()
            let run = g.runOnSoftCPU()
            let succeeds = leaf == 0x1F007 || (leaf == 0x1F003 && !user) || (leaf == 0x1F005 && !write)
            let accessed = [0x2008, 0x10000, 0x11000, 0x12008].map { run.memory[$0] & 0x20 != 0 }
            #expect(accessed == Array(repeating: succeeds, count: 4), "write \(write): \(steps.map(\.exit))")
            #expect((run.memory[0x12008] & 0x40 != 0) == (succeeds && write), "D: write \(write)")
        }
    }

    /// MOV to CR3 with a bit at or above MAXPHYADDR is #GP(0) in long mode.
    @Test func cr3AboveMaxPhysicalAddressIsGeneralProtection() throws {
        // mov rax, cr3; bts rax, 36; mov cr3, rax
        let g = PageWalkGuest.long64(user: false, load: [0x0F, 0x20, 0xD8, 0x48, 0x0F, 0xBA, 0xE8, 0x24, 0x0F, 0x22, 0xD8])
        let steps = try g.expectSameOnHostAndSoftCPU()
        #expect(steps.first?.exit == PageWalkGuest.faultExit(0))
        #expect(steps.first?.special.cr3 == 0x2000)
    }
}

/// Reserved bits outside 4-level paging, against the SDM (the host's
/// kvm_pvm runs no guest paging outside long mode): PAE entries reserve
/// bits MAXPHYADDR-62 and NX without NXE; a 32-bit 4 MiB page reserves
/// bit 21 and, with PSE-36, the address bits above MAXPHYADDR (all of
/// 13-21 without PSE-36).
@Suite("X86 reserved page-table bits in PAE and 32-bit paging")
struct LegacyReservedBitTests {
    /// 32-bit code that reads [address], then `out 0x10, al; hlt`; the #PF
    /// handler reports the error code (port 0x3E) and CR2 (port 0x3F).
    static func guest(pae: Bool, address: UInt32) -> SystemGuest {
        var g = SystemGuest.protected32(code: [0xA1] + withUnsafeBytes(of: address.littleEndian, Array.init) + [0xE6, 0x10, 0xF4])
        if pae {
            g.store64(0x3000 | 1, at: 0x2000)
            g.store64(0x4000 | 7, at: 0x3000)
            g.store64(0x87, at: 0x3010)  // 0x400000: a 2 MiB page onto 0
            for page in 0..<32 { g.store64(UInt64(page) << 12 | 7, at: 0x4000 + page * 8) }
            g.special.cr4 = ControlBits.cr4PAE
            g.special.efer = ControlBits.eferNXE
        } else {
            g.store32(0x3000 | 7, at: 0x2000)
            g.store32(0x87, at: 0x2004)  // 0x400000: a 4 MiB page onto 0
            for page in 0..<32 { g.store32(UInt32(page) << 12 | 7, at: 0x3000 + page * 4) }
            g.special.cr4 = ControlBits.cr4PSE
        }
        g.special.cr3 = 0x2000
        g.special.cr0 = 0x8001_0011
        g.write([0x58, 0xE7, 0x3E, 0x0F, 0x20, 0xD0, 0xE7, 0x3F, 0xF4], at: SystemGuest.handlers + 0xE0)
        g.gate32(14, handler: UInt32(SystemGuest.handlers + 0xE0))
        g.write([0x58, 0xE7, 0x3D, 0xF4], at: SystemGuest.handlers + 0xD0)
        g.gate32(13, handler: UInt32(SystemGuest.handlers + 0xD0))
        return g
    }

    static let pse36: [CPUIDEntry] = [CPUIDEntry(function: 1, edx: 1 << 17)]

    @Test(arguments: [UInt64(1) << 36, 1 << 52, 1 << 62])
    func paeBitsAboveMaxPhysicalAddressUpToSixtyTwoAreReserved(bit: UInt64) {
        var g = Self.guest(pae: true, address: 0x11000)
        g.store64(0x11000 | 7 | bit, at: 0x4000 + 0x11 * 8)
        #expect(g.runOnSoftCPU(maxExits: 2).steps.map(\.exit) == ["io out 0x3e size 4 value 0x9", "io out 0x3f size 4 value 0x11000"])
    }

    @Test func paeNXWithoutNXEIsReserved() {
        var g = Self.guest(pae: true, address: 0x11000)
        g.special.efer = 0
        g.store64(0x11000 | 7 | 1 << 63, at: 0x4000 + 0x11 * 8)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3e size 4 value 0x9")
        g.special.efer = ControlBits.eferNXE
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x10 size 1 value 0x0", "with NXE: readable")
    }

    @Test func paeTwoMegabytePageLowBitsAreReserved() {
        var g = Self.guest(pae: true, address: 0x403000)
        g.store64(0x87 | 1 << 13, at: 0x3010)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3e size 4 value 0x9")
    }

    @Test func paePDPTEAboveMaxPhysicalAddressFailsTheCR3Load() {
        // mov eax, 0x2000; mov cr3, eax, with PDPTE 1 having bit 36 set: #GP(0)
        var g = Self.guest(pae: true, address: 0)
        g.write([0xB8, 0x00, 0x20, 0x00, 0x00, 0x0F, 0x22, 0xD8], at: SystemGuest.code)
        g.store64(0x7000 | 1 | 1 << 36, at: 0x2008)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3d size 4 value 0x0")
        g.cpuid = [CPUIDEntry(function: 0x8000_0000, eax: 0x8000_0008), CPUIDEntry(function: 0x8000_0008, eax: 40)]
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit != "io out 0x3d size 4 value 0x0", "with 40 bits it loads")
    }

    /// Bit 21 of a 4 MiB PDE is reserved with or without PSE-36.
    @Test(arguments: [[], pse36])
    func bit21OfAFourMegabytePageIsReserved(cpuid: [CPUIDEntry]) {
        var g = Self.guest(pae: false, address: 0x403000)
        g.cpuid = cpuid
        g.store32(0x87 | 1 << 21, at: 0x2004)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3e size 4 value 0x9")
    }

    /// With PSE-36 and a 36-bit MAXPHYADDR, bits 13-16 are address bits
    /// 32-35 and 17-20 are reserved; without PSE-36, all of 13-20 are.
    @Test func pse36AddressBitsFollowMaxPhysicalAddress() {
        var g = Self.guest(pae: false, address: 0x403000)
        g.cpuid = Self.pse36
        g.store32(0x87 | 1 << 13, at: 0x2004)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "mmio read 0x100003000 size 4")
        g.store32(0x87 | 1 << 17, at: 0x2004)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3e size 4 value 0x9")
        g.cpuid = Self.pse36 + [CPUIDEntry(function: 0x8000_0000, eax: 0x8000_0008), CPUIDEntry(function: 0x8000_0008, eax: 40)]
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "mmio read 0x1000003000 size 4", "bit 17 is address bit 36 with 40 bits")
        g.cpuid = []
        g.store32(0x87 | 1 << 13, at: 0x2004)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3e size 4 value 0x9")
    }

    /// 1 GiB pages work where the guest's CPUID has Page1GB.
    @Test func gigabytePageWithPage1GBInTheCPUIDMaps() {
        // mov rax, [0x800000E000]
        var g = PageWalkGuest.long64(user: false, load: [0x48, 0xA1, 0x00, 0xE0, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00])
        g.store64(0x10000 | 7, at: 0x2008)
        g.store64(0x87, at: 0x10000)
        g.store64(0x1234_5678, at: 0xE000)
        g.cpuid = [CPUIDEntry(function: 0x8000_0000, eax: 0x8000_0001), CPUIDEntry(function: 0x8000_0001, edx: 1 << 26 | 1 << 29)]
        let steps = g.runOnSoftCPU().steps
        #expect(steps.map(\.exit) == ["halt"])
        #expect(steps.first?.registers.rax == 0x1234_5678)
        // Bits 13-29 of a 1 GiB page are reserved.
        g.store64(0x87 | 1 << 29, at: 0x10000)
        #expect(g.runOnSoftCPU().steps.first?.exit == PageWalkGuest.faultExit(0x9))
    }
}

/// SMEP and SMAP (SDM 4.6) against the host, whose KVM applies them to a
/// guest with CR4.SMEP or SMAP at CPL 0 although its supported CPUID does
/// not offer them. Every page is a supervisor page but 0xC000 (user code)
/// and 0x1F000 (user data and code), so that the handlers, stacks and
/// tables are not themselves user-mode addresses. EFLAGS.AC is changed
/// with POPF: the host's emulator has no STAC or CLAC. kvm_pvm's own
/// exception delivery clears AC, which the SDM's IDT delivery leaves as
/// it is: AC is not compared in a handler entered with it set.
@Suite("X86 SMEP and SMAP against the host", .enabled(if: HostKVM.isAvailable))
struct SupervisorProtectionTests {
    static let features: [CPUIDEntry] = [
        CPUIDEntry(function: 0, eax: 7), CPUIDEntry(function: 7, flags: 1, ebx: 1 << 7 | 1 << 20),
    ]

    static func guest(cr4: UInt64, code: [UInt8], cpuid: [CPUIDEntry] = features) -> SystemGuest {
        var g = PageWalkGuest.long64(user: false, load: code)
        for page in 0..<0x20 where page != 0xC && page != 0x1F { g.store64(UInt64(page) << 12 | 3, at: 0x5000 + page * 8) }
        g.write([0xE7, 0x52, 0xC3], at: 0x1F000)  // out 0x52, eax; ret
        g.store64(0x5A5A, at: 0x1F800)
        g.special.cr4 |= cr4
        g.cpuid = cpuid
        return g
    }

    static let callPage1F: [UInt8] = [0xB8, 0x00, 0xF0, 0x01, 0x00, 0xFF, 0xD0]  // mov eax, 0x1f000; call rax
    static let readPage1F: [UInt8] = [0x48, 0x8B, 0x04, 0x25, 0x00, 0xF8, 0x01, 0x00]  // mov rax, [0x1f800]
    static let writePage1F: [UInt8] = [0x48, 0x89, 0x04, 0x25, 0x00, 0xF8, 0x01, 0x00]  // mov [0x1f800], rax
    /// pushfq; or/and dword [rsp], AC; popfq
    static let setAC: [UInt8] = [0x9C, 0x81, 0x0C, 0x24, 0x00, 0x00, 0x04, 0x00, 0x9D]
    static let clearAC: [UInt8] = [0x9C, 0x81, 0x24, 0x24, 0xFF, 0xFF, 0xFB, 0xFF, 0x9D]
    static let outAX: [UInt8] = [0xE7, 0x53]

    @Test func smepMakesASupervisorFetchFromAUserPageAFault() throws {
        let steps = try Self.guest(cr4: ControlBits.cr4SMEP, code: Self.callPage1F).expectSameOnHostAndSoftCPU()
        #expect(steps.map(\.exit) == [PageWalkGuest.faultExit(0x11), "io out 0x51 size 4 value 0x1f000", "halt"])
    }

    @Test func withoutSMEPTheSupervisorRunsUserPages() throws {
        let steps = try Self.guest(cr4: 0, code: Self.callPage1F).expectSameOnHostAndSoftCPU()
        #expect(steps.map(\.exit) == ["io out 0x52 size 4 value 0x1f000", "halt"])
    }

    @Test(arguments: [false, true])
    func smapMakesSupervisorDataAccessesToUserPagesFaultWithACClear(write: Bool) throws {
        let errorCode: UInt32 = write ? 0x3 : 0x1
        let steps = try Self.guest(cr4: ControlBits.cr4SMAP, code: write ? Self.writePage1F : Self.readPage1F)
            .expectSameOnHostAndSoftCPU()
        #expect(steps.map(\.exit) == [PageWalkGuest.faultExit(errorCode), "io out 0x51 size 4 value 0x1f800", "halt"])
    }

    /// AC opens user pages to explicit accesses; clearing it closes them
    /// again (the second access hits the TLB entry the first one filled).
    @Test func acAllowsAndItsClearingForbidsAgain() throws {
        let code = Self.setAC + Self.readPage1F + Self.outAX + Self.clearAC + Self.readPage1F
        let steps = try Self.guest(cr4: ControlBits.cr4SMAP, code: code).expectSameOnHostAndSoftCPU()
        #expect(steps.map(\.exit) == ["io out 0x53 size 4 value 0x5a5a", PageWalkGuest.faultExit(0x1),
                                      "io out 0x51 size 4 value 0x1f800", "halt"])
    }

    /// A read that filled the TLB does not let a fetch past SMEP.
    @Test func aCachedTranslationStillChecksSMEP() throws {
        let code = Self.setAC + Self.readPage1F + Self.outAX + Self.callPage1F
        let steps = try Self.guest(cr4: ControlBits.cr4SMEP | ControlBits.cr4SMAP, code: code)
            .expectSameOnHostAndSoftCPU(ignoringFlags: RFLAGS.ac)
        #expect(steps.map(\.exit) == ["io out 0x53 size 4 value 0x5a5a", PageWalkGuest.faultExit(0x11),
                                      "io out 0x51 size 4 value 0x1f000", "halt"])
    }

    /// Reading an LDT on a user page is an implicit supervisor access: SMAP
    /// forbids it even with EFLAGS.AC set.
    @Test func smapForbidsImplicitAccessesWhateverAC() throws {
        // (AC set); mov ax, 0x50; lldt ax; mov ax, 0x4; mov ds, ax
        let code: [UInt8] = Self.setAC + [0x66, 0xB8, 0x50, 0x00, 0x0F, 0x00, 0xD0, 0x66, 0xB8, 0x04, 0x00, 0x8E, 0xD8]
        var g = Self.guest(cr4: ControlBits.cr4SMAP, code: code)
        g.store64(SystemGuest.descriptor(type: 0x2, dpl: 0, s: false, db: false, base: 0x1F000, limit: 0xF, g: false),
                  at: SystemGuest.gdt + 0x50)
        g.store64(0, at: SystemGuest.gdt + 0x58)
        g.special.gdt.limit = 0x5F
        g.store64(SystemGuest.descriptor(type: 0x3, dpl: 0), at: 0x1F000)
        #expect(try g.expectSameOnHostAndSoftCPU(ignoringFlags: RFLAGS.ac).map(\.exit)
                == [PageWalkGuest.faultExit(0x1), "io out 0x51 size 4 value 0x1f000", "halt"])
        g.special.cr4 &= ~ControlBits.cr4SMAP
        #expect(try g.expectSameOnHostAndSoftCPU().map(\.exit) == ["halt"], "without SMAP the LDT is read")
    }

    /// MOV to CR4 sets SMEP or SMAP where the guest's CPUID shows it, or
    /// where no CPUID was given (KVM reserves CR4 bits by the CPUID only
    /// once it has one: cr4_guest_rsvd_bits). A CPUID without the feature
    /// makes it #GP(0) (kvm_is_valid_cr4; kvm_pvm takes it anyway, so that
    /// case is SMAPInstructionTests', against the SDM).
    @Test(arguments: [ControlBits.cr4SMEP, ControlBits.cr4SMAP])
    func cr4BitsWithTheirCPUIDFeatureOrWithoutCPUID(bit: UInt64) throws {
        let code = SMAPInstructionTests.setCR4(bit)
        for cpuid in [Self.features, []] {
            let steps = try Self.guest(cr4: 0, code: code, cpuid: cpuid).expectSameOnHostAndSoftCPU()
            #expect(steps.map(\.exit) == ["halt"])
            #expect(steps.first.map { $0.special.cr4 & bit } == bit)
        }
    }
}

/// STAC and CLAC, against the SDM: the host's emulator does not run them.
@Suite("X86 STAC and CLAC")
struct SMAPInstructionTests {
    static let stac: [UInt8] = [0x0F, 0x01, 0xCB], clac: [UInt8] = [0x0F, 0x01, 0xCA]

    @Test func stacAllowsAndClacForbidsAgain() {
        let code = Self.stac + SupervisorProtectionTests.readPage1F + SupervisorProtectionTests.outAX + Self.clac
            + SupervisorProtectionTests.readPage1F
        let steps = SupervisorProtectionTests.guest(cr4: ControlBits.cr4SMAP, code: code).runOnSoftCPU().steps
        #expect(steps.map(\.exit) == ["io out 0x53 size 4 value 0x5a5a", PageWalkGuest.faultExit(0x1),
                                      "io out 0x51 size 4 value 0x1f800", "halt"])
    }

    /// mov rax, cr4; or rax, bit; mov cr4, rax (then hlt, on a supervisor page).
    static func setCR4(_ bit: UInt64) -> [UInt8] {
        [0x0F, 0x20, 0xE0, 0x48, 0x0D] + withUnsafeBytes(of: UInt32(bit).littleEndian, Array.init) + [0x0F, 0x22, 0xE0]
    }

    @Test(arguments: [ControlBits.cr4SMEP, ControlBits.cr4SMAP])
    func cr4BitWithoutItsFeatureInAGivenCPUIDIsGeneralProtection(bit: UInt64) {
        let g = SupervisorProtectionTests.guest(cr4: 0, code: Self.setCR4(bit), cpuid: [CPUIDEntry(function: 0, eax: 1)])
        let steps = g.runOnSoftCPU().steps
        #expect(steps.first?.exit == PageWalkGuest.faultExit(0))
        #expect(steps.first.map { $0.special.cr4 & bit } == 0)
    }

    @Test func stacIsUndefinedWithoutSMAPOrAboveCPL0() {
        var without = SupervisorProtectionTests.guest(cr4: 0, code: Self.stac, cpuid: [])
        without.write([0xE6, 0x06, 0xF4], at: SystemGuest.handlers + 0x600)
        without.gate64(6, handler: UInt64(SystemGuest.handlers + 0x600))
        #expect(without.runOnSoftCPU().steps.first?.exit.hasPrefix("io out 0x6 ") == true)

        var user = SystemGuest.long64(code: PrivilegeDifferentialTests.enterUser64)
        user.cpuid = SupervisorProtectionTests.features
        user.write(Self.stac, at: SystemGuest.userCode)
        user.write([0xE6, 0x06, 0xF4], at: SystemGuest.handlers + 0x600)
        user.gate64(6, handler: UInt64(SystemGuest.handlers + 0x600))
        #expect(user.runOnSoftCPU().steps.first?.exit.hasPrefix("io out 0x6 ") == true)
    }
}
