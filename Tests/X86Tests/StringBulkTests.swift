import Testing
@testable import X86

/// REP MOVS and REP STOS over many pages: with the decoded cache on they take
/// the bulk path (page by page through the host TLB), without it the element
/// path; every `Machine.run` compares the two, and each test checks the
/// result against the element-by-element rule computed here.
@Suite("X86 bulk REP MOVS and STOS")
struct StringBulkTests {
    /// The bytes of rep movs/stos for an element size, 64-bit mode.
    static func repeated(_ op: UInt8, size: Int) -> [UInt8] {
        switch size {
        case 1: return [0xF3, op]
        case 2: return [0x66, 0xF3, op | 1]
        case 4: return [0xF3, op | 1]
        default: return [0xF3, 0x48, op | 1]
        }
    }

    static func pattern(_ count: Int, seed: UInt8 = 0) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8 &+ Int(seed)) | 1 }
    }

    func bytes(_ m: Machine, _ address: UInt64, _ count: Int) -> [UInt8] {
        (0..<count).map { m.load8(address + UInt64($0)) }
    }

    /// What element-by-element REP MOVS leaves in `memory`.
    func referenceMove(_ memory: inout [UInt8], from source: Int, to destination: Int, count: Int, size: Int, backwards: Bool = false) {
        for i in 0..<count {
            let offset = backwards ? -i * size : i * size
            let element = Array(memory[(source + offset)..<(source + offset + size)])
            memory.replaceSubrange((destination + offset)..<(destination + offset + size), with: element)
        }
    }

    @Test(arguments: [1, 2, 4, 8])
    func repMovsCopiesAcrossPagesForEachElementSize(size: Int) {
        let m = Machine(.long64, code: Self.repeated(0xA4, size: size) + [hlt])
        let count = 0x3208 / size
        m.write(Self.pattern(0x3300), at: 0x20000)
        m[.rsi] = 0x20010
        m[.rdi] = 0x30008
        m[.rcx] = UInt64(count)
        #expect(m.run() == .halt)
        #expect(bytes(m, 0x30008, count * size) == Array(Self.pattern(0x3300)[0x10..<(0x10 + count * size)]))
        #expect(m.load8(0x30008 + UInt64(count * size)) == 0)
        #expect(m[.rcx] == 0)
        #expect(m[.rsi] == 0x20010 + UInt64(count * size))
        #expect(m[.rdi] == 0x30008 + UInt64(count * size))
    }

    @Test(arguments: [1, 2, 4, 8])
    func repStosFillsAcrossPagesForEachElementSize(size: Int) {
        let m = Machine(.long64, code: Self.repeated(0xAA, size: size) + [hlt])
        let count = 0x2410 / size
        m[.rax] = 0x1122_3344_5566_7788
        m[.rdi] = 0x30FF8
        m[.rcx] = UInt64(count)
        #expect(m.run() == .halt)
        let element = (0..<size).map { UInt8(truncatingIfNeeded: 0x1122_3344_5566_7788 as UInt64 >> UInt64($0 * 8)) }
        #expect(bytes(m, 0x30FF8, count * size) == Array((0..<count).map { _ in element }.joined()))
        #expect(m.load8(0x30FF8 + UInt64(count * size)) == 0)
        #expect(m[.rdi] == 0x30FF8 + UInt64(count * size))
        #expect(m[.rcx] == 0)
    }

    @Test func repMovsqUnalignedAcrossPagesStraddlesElements() {
        let m = Machine(.long64, code: Self.repeated(0xA4, size: 8) + [hlt])
        m.write(Self.pattern(0x3000), at: 0x20000)
        m[.rsi] = 0x20003
        m[.rdi] = 0x30005
        m[.rcx] = 0x500
        #expect(m.run() == .halt)
        #expect(bytes(m, 0x30005, 0x2800) == Array(Self.pattern(0x3000)[3..<0x2803]))
    }

    @Test func repMovsqFaultsAtTheElementOfANotPresentDestinationPage() {
        let m = Machine(.long64, code: Self.repeated(0xA4, size: 8) + [hlt])
        m.store64(Machine.pageTable + 0x31 * 8, 0)
        m.write(Self.pattern(0x3000), at: 0x20000)
        m[.rsi] = 0x20000
        m[.rdi] = 0x30008
        m[.rcx] = 0x600
        #expect(m.run() == .exception(vector: 14, errorCode: 2))
        // The elements before the page are done, the faulting one is not.
        let done = (0x1000 - 8) / 8
        #expect(m.cpu.state.cr2 == 0x31000)
        #expect(m[.rdi] == 0x31000)
        #expect(m[.rsi] == 0x20000 + UInt64(done * 8))
        #expect(m[.rcx] == 0x600 - UInt64(done))
        #expect(m.cpu.state.rip == Machine.codeAddress)
        #expect(bytes(m, 0x30008, done * 8) == Array(Self.pattern(0x3000)[0..<(done * 8)]))
    }

    @Test func repMovsqStraddlingIntoANotPresentPageFaultsBeforeTheElement() {
        let m = Machine(.long64, code: Self.repeated(0xA4, size: 8) + [hlt])
        m.store64(Machine.pageTable + 0x31 * 8, 0)
        m.write(Self.pattern(0x3000), at: 0x20000)
        m[.rsi] = 0x20000
        m[.rdi] = 0x30004
        m[.rcx] = 0x600
        #expect(m.run() == .exception(vector: 14, errorCode: 2))
        let done = (0x1000 - 8) / 8  // the element at 0x30FFC straddles into the absent page
        #expect(m.cpu.state.cr2 == 0x31000)
        #expect(m[.rdi] == 0x30004 + UInt64(done * 8))
        #expect(m[.rcx] == 0x600 - UInt64(done))
        #expect(m.load8(0x30FFC) == 0)
    }

    @Test func repMovsbFaultsAtANotPresentSourcePage() {
        let m = Machine(.long64, code: Self.repeated(0xA4, size: 1) + [hlt])
        m.store64(Machine.pageTable + 0x22 * 8, 0)
        m.write(Self.pattern(0x2000), at: 0x20000)
        m[.rsi] = 0x20100
        m[.rdi] = 0x40000
        m[.rcx] = 0x3000
        #expect(m.run() == .exception(vector: 14, errorCode: 0))
        #expect(m.cpu.state.cr2 == 0x22000)
        #expect(m[.rsi] == 0x22000)
        #expect(m[.rdi] == 0x41F00)
        #expect(m[.rcx] == 0x3000 - 0x1F00)
    }

    @Test func repStosdFaultsAtAReadOnlyPageWithWP() {
        let m = Machine(.long64, code: Self.repeated(0xAA, size: 4) + [hlt])
        m.store64(Machine.pageTable + 0x32 * 8, 0x32000 | 5)
        m.cpu.state.cr0 |= ControlBits.cr0WP
        m[.rax] = 0xDEAD_BEEF
        m[.rdi] = 0x30000
        m[.rcx] = 0x1000
        #expect(m.run() == .exception(vector: 14, errorCode: 3))
        #expect(m.cpu.state.cr2 == 0x32000)
        #expect(m[.rdi] == 0x32000)
        #expect(m[.rcx] == 0x1000 - 0x800)
        #expect(m.load64(0x31FF8) == 0xDEAD_BEEF_DEAD_BEEF)
        #expect(m.load64(0x32000) == 0)
    }

    @Test(arguments: [(1, 3), (1, 1), (8, 4), (8, 8), (8, 0x18), (4, 0x1001), (8, -5), (1, -1), (2, -0x1003)])
    func overlappingRepMovsCopiesElementByElement(size: Int, distance: Int) {
        let m = Machine(.long64, code: Self.repeated(0xA4, size: size) + [hlt])
        let source = 0x22FF0
        let count = 0x2100 / size
        let initial = Self.pattern(0x8000, seed: 5)
        m.write(initial, at: 0x20000)
        m[.rsi] = UInt64(source)
        m[.rdi] = UInt64(source + distance)
        m[.rcx] = UInt64(count)
        #expect(m.run() == .halt)
        var expected = initial
        referenceMove(&expected, from: source - 0x20000, to: source + distance - 0x20000, count: count, size: size)
        #expect(bytes(m, 0x20000, 0x8000) == expected)
        #expect(m[.rdi] == UInt64(source + distance + count * size))
    }

    @Test func repMovsqBackwardsWithDFAcrossPages() {
        // std; rep movsq; hlt
        let m = Machine(.long64, code: [0xFD] + Self.repeated(0xA4, size: 8) + [hlt])
        let initial = Self.pattern(0x8000, seed: 9)
        m.write(initial, at: 0x20000)
        m[.rsi] = 0x23008
        m[.rdi] = 0x23010
        m[.rcx] = 0x500
        #expect(m.run() == .halt)
        var expected = initial
        referenceMove(&expected, from: 0x3008, to: 0x3010, count: 0x500, size: 8, backwards: true)
        #expect(bytes(m, 0x20000, 0x8000) == expected)
        #expect(m[.rdi] == 0x23010 - 0x500 * 8)
    }

    @Test func repStosdIntoMMIOExitsForEachElement() {
        // 32-bit: the last 8 bytes of RAM, then two elements above it.
        let m = Machine(.protected32, code: [0xF3, 0xAB, hlt])
        m[.rax] = 0xCAFE_F00D
        m[.rdi] = 0xF_E000
        m[.rcx] = 0x802
        #expect(m.run() == .mmio(MMIOExit(address: 0x10_0000, size: 4, isWrite: true, data: 0xCAFE_F00D)))
        #expect(m[.rcx] == 1)
        #expect(m.load64(0xF_FFF8) == 0xCAFE_F00D_CAFE_F00D)
        #expect(m.load64(0xF_E000) == 0xCAFE_F00D_CAFE_F00D)
        #expect(m.load64(0xF_DFF8) == 0)
        #expect(m.run() == .mmio(MMIOExit(address: 0x10_0004, size: 4, isWrite: true, data: 0xCAFE_F00D)))
        #expect(m[.rcx] == 0)
        #expect(m.run() == .halt)
    }

    @Test func repMovsbIntoCachedCodeRunsTheNewCode() {
        let m = Machine(.long64, code: [
            0xE8, 0xFB, 0x00, 0x00, 0x00,              // call 0x1100
            0x89, 0xC3,                                // mov ebx, eax
            0x48, 0xC7, 0xC6, 0x00, 0x00, 0x02, 0x00,  // mov rsi, 0x20000
            0x48, 0xC7, 0xC7, 0x00, 0x0F, 0x00, 0x00,  // mov rdi, 0xF00
            0x48, 0xC7, 0xC1, 0x00, 0x03, 0x00, 0x00,  // mov rcx, 0x300
            0xF3, 0xA4,                                // rep movsb
            0xE8, 0xDD, 0x00, 0x00, 0x00,              // call 0x1100
            hlt,
        ])
        m.write([0xB8, 0x01, 0x00, 0x00, 0x00, 0xC3], at: 0x1100)  // mov eax, 1; ret
        // 0xF00-0x11FF: zeros, then this code's own bytes, a new function at 0x1100.
        var copy = [UInt8](repeating: 0, count: 0x300)
        copy.replaceSubrange(0x100..<0x200, with: bytes(m, 0x1000, 0x100))
        copy.replaceSubrange(0x200..<0x206, with: [0xB8, 0x02, 0x00, 0x00, 0x00, 0xC3])
        m.write(copy, at: 0x20000)
        #expect(m.run() == .halt)
        #expect(m[.rbx] == 1)
        #expect(m[.rax] == 2)
    }

    @Test func repStosdStopsAtTheSegmentLimitWithGP() {
        // The limit ends in the middle of a page: the elements up to it are stored.
        let m = Machine(.protected32, code: [0xF3, 0xAB, hlt])
        m.cpu.state[.es] = SegmentRegister(selector: 16, base: 0x1000, limit: 0x307FF, attributes: 0x4093)
        m[.rax] = 0x7777_7777
        m[.rdi] = 0x2E000
        m[.rcx] = 0x1000
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
        #expect(m[.rdi] == 0x30800)
        #expect(m[.rcx] == 0x1000 - 0xA00)
        #expect(m.load64(0x317F8) == 0x7777_7777_7777_7777)
        #expect(m.load64(0x31800) == 0)
    }

    @Test func repStosbWrapsTheSixteenBitOffset() {
        // Real mode: DI wraps from 0xFFFF to 0 within ES.
        let m = Machine(code: [0xF3, 0xAA, hlt])
        m.cpu.state[.es] = .realMode(selector: 0x2000)
        m[.rax] = 0x66
        m[.rdi] = 0xFF00
        m[.rcx] = 0x200
        #expect(m.run() == .halt)
        #expect(m[.rdi] == 0x100)
        #expect(bytes(m, 0x2FF00, 0x100) == [UInt8](repeating: 0x66, count: 0x100))
        #expect(bytes(m, 0x20000, 0x101) == [UInt8](repeating: 0x66, count: 0x100) + [0])
        #expect(m.load8(0x30000) == 0)
    }

    @Test func repStosbWithSixteenBitAddressesInProtectedModeWrapsDI() {
        // 32-bit code, a16 rep stosb: DI and CX are 16-bit, the upper halves stay.
        let m = Machine(.protected32, code: [0x67, 0xF3, 0xAA, hlt])
        m[.rax] = 0x55
        m[.rdi] = 0x7_FFF0
        m[.rcx] = 0x3_0020
        #expect(m.run() == .halt)
        #expect(m[.rdi] == 0x7_0010)
        #expect(m[.rcx] == 0x3_0000)
        #expect(bytes(m, 0xFFF0, 0x10) == [UInt8](repeating: 0x55, count: 0x10))
        #expect(bytes(m, 0, 0x11) == [UInt8](repeating: 0x55, count: 0x10) + [0])
        #expect(m.load8(0x1_0000) == 0)
    }

    @Test(arguments: [1, 8])
    func repMovsBetweenPagesThatShareHostTLBSlotsCopiesAndFaultsAtTheElement(size: Int) {
        // Linear 0x120000-0x123FFF (256 pages above the source: the same TLB
        // slots) maps frames 0x40000-0x43FFF; its third page is absent.
        let m = Machine(.long64, code: Self.repeated(0xA4, size: size) + [hlt])
        for page in 0..<4 {
            m.store64(Machine.pageTable + UInt64(0x120 + page) * 8, page == 2 ? 0 : UInt64(0x40 + page) << 12 | 3)
        }
        m.write(Self.pattern(0x4000, seed: 3), at: 0x20000)
        m[.rsi] = 0x20010
        m[.rdi] = 0x120010
        m[.rcx] = UInt64(0x3000 / size)
        #expect(m.run() == .exception(vector: 14, errorCode: 2))
        let done = 0x2000 - 0x10
        #expect(m.cpu.state.cr2 == 0x122000)
        #expect(m[.rdi] == 0x122000)
        #expect(m[.rsi] == 0x20010 + UInt64(done))
        #expect(m[.rcx] == UInt64((0x3000 - done) / size))
        #expect(bytes(m, 0x40010, done) == Array(Self.pattern(0x4000, seed: 3)[0x10..<(0x10 + done)]))
        #expect(m.load8(0x42000) == 0)
    }
}

/// REP MOVS and STOS that fault in the middle against the host's KVM
/// emulator (CPL 0): RCX, RSI, RDI, CR2, the error code pushed and the
/// elements stored before the fault. The #PF handler halts.
@Suite("X86 REP string faults against the host", .enabled(if: HostKVM.isAvailable))
struct StringFaultDifferentialTests {
    struct Case: Sendable, CustomStringConvertible {
        var label: String
        var code: [UInt8]
        /// Page-table entry of a page in 0x10-0x1F: its new value.
        var page: Int
        var entry: UInt64
        var writeProtect = false
        /// Bytes KVM's emulator stores and the CPU does not (see the case).
        var ignoring: [Range<Int>] = []
        var description: String { label }
    }

    static func mov(_ register: UInt8, _ value: UInt32) -> [UInt8] {
        [0x48, 0xC7, 0xC0 | register] + (0..<4).map { UInt8(truncatingIfNeeded: value >> UInt32($0 * 8)) }
    }

    static let cases: [Case] = [
        Case(label: "rep movsq into an absent page",
             code: mov(6, 0x10008) + mov(7, 0x14010) + mov(1, 0x600) + [0xF3, 0x48, 0xA5, 0xF4], page: 0x15, entry: 0),
        Case(label: "rep movsq straddling into an absent page",
             code: mov(6, 0x10008) + mov(7, 0x14004) + mov(1, 0x600) + [0xF3, 0x48, 0xA5, 0xF4], page: 0x15, entry: 0,
             // KVM's emulator stores the first page's half of a split store
             // before it translates the second (emulator_read_write); the CPU
             // translates both first and stores nothing, as for any store.
             ignoring: [0x14FFC..<0x15000]),
        Case(label: "rep movsb from an absent page",
             code: mov(6, 0x10100) + mov(7, 0x18000) + mov(1, 0x2000) + [0xF3, 0xA4, 0xF4], page: 0x11, entry: 0),
        Case(label: "rep stosd into a read-only page with WP",
             code: mov(0, 0x1234_5678) + mov(7, 0x14008) + mov(1, 0x800) + [0xF3, 0xAB, 0xF4],
             page: 0x15, entry: 0x15000 | 5, writeProtect: true),
    ]

    @Test(arguments: cases)
    func repStringFaultMatchesHost(_ c: Case) throws {
        var g = SystemGuest.long64(code: c.code)
        g.write((0..<0x2000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }, at: 0x10000)
        g.store64(UInt64(c.entry), at: 0x5000 + c.page * 8)
        g.gate64(14, handler: UInt64(SystemGuest.handlers))
        g.write([0xF4], at: SystemGuest.handlers)
        if c.writeProtect { g.special.cr0 |= 1 << 16 }
        let steps = try g.expectSameOnHostAndSoftCPU(ignoringMemory: c.ignoring)
        #expect(steps.map(\.exit) == ["halt"])
        #expect(steps.first?.special.cr2 == UInt64(c.page) << 12)
    }
}
