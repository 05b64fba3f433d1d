import KVM
import Testing
@testable import X86

/// The TSS I/O permission bitmap at CPL 3 above IOPL, against the host:
/// kvm_pvm's KVM checks the guest's 64-bit TSS for the IN and OUT that its
/// CPL-3 code performs. The TSS's limit is `limit`, its I/O bitmap at 0x68.
enum IOBitmapGuest {
    static func make(limit: UInt32 = 0x100, bitmap: [UInt8] = [UInt8](repeating: 0, count: 0x20), user: [UInt8]) -> SystemGuest {
        var g = SystemGuest.long64(code: PrivilegeDifferentialTests.enterUser64)
        g.write(user + [0xF4], at: SystemGuest.userCode)
        g.store64(SystemGuest.descriptor(type: 0xB, dpl: 0, s: false, db: false, base: UInt32(SystemGuest.tssAddress),
                                         limit: limit, g: false), at: SystemGuest.gdt + 0x40)
        g.special.tr.limit = limit
        g.write([0x68, 0x00], at: SystemGuest.tssAddress + 0x66)
        g.write(bitmap, at: SystemGuest.tssAddress + 0x68)
        g.write([0x58, 0xE7, 0x50, 0xF4], at: SystemGuest.handlers + 0x300)  // pop rax; out 0x50, eax; hlt
        g.gate64(13, handler: UInt64(SystemGuest.handlers + 0x300))
        return g
    }

    /// A bitmap with the bit of `port` set.
    static func denying(_ port: Int) -> [UInt8] {
        var bitmap = [UInt8](repeating: 0, count: 0x20)
        bitmap[port >> 3] |= 1 << UInt8(port & 7)
        return bitmap
    }

    /// The user code's closing HLT: #GP(0), reported by the handler.
    static let generalProtection = ["io out 0x50 size 4 value 0x0", "halt"]
}

@Suite("X86 I/O permission bitmap against the host", .enabled(if: HostKVM.isAvailable))
struct IOPermissionDifferentialTests {
    /// The exits on both, and the registers at the end. Registers at the
    /// I/O exit itself are not compared: kvm_pvm emulates a CPL-3 IN or OUT
    /// after the #GP it takes on the real CPU, and shows RF set, or a string
    /// OUT completed, where VMX and the soft CPU do not.
    func expectSameExits(_ guest: SystemGuest, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String] {
        let host = try guest.runOnHost().steps, soft = guest.runOnSoftCPU().steps
        #expect(soft.map(\.exit) == host.map(\.exit), sourceLocation: sourceLocation)
        #expect(soft.last?.registers == host.last?.registers, sourceLocation: sourceLocation)
        return soft.map(\.exit)
    }

    static let instructions: [(name: String, code: [UInt8], exit: String)] = [
        ("in al, 0x80", [0xE4, 0x80], "io in 0x80 size 1 value 0x0"),
        ("out 0x80, al", [0xE6, 0x80], "io out 0x80 size 1 value 0x2b"),
        ("in ax, dx", [0x66, 0xBA, 0x80, 0x00, 0x66, 0xED], "io in 0x80 size 2 value 0x0"),
        ("insb", [0x66, 0xBA, 0x80, 0x00, 0x48, 0xC7, 0xC7, 0x00, 0xE0, 0x00, 0x00, 0x6C], "io in 0x80 size 1 value 0x0"),
        ("outsb", [0x66, 0xBA, 0x80, 0x00, 0x48, 0xC7, 0xC6, 0x00, 0xE0, 0x00, 0x00, 0x6E], "io out 0x80 size 1 value 0x0"),
    ]

    @Test(arguments: 0..<instructions.count)
    func clearBitAllowsThePort(_ index: Int) throws {
        let (name, code, exit) = Self.instructions[index]
        let exits = try expectSameExits(IOBitmapGuest.make(user: code))
        #expect(exits == [exit] + IOBitmapGuest.generalProtection, "\(name)")
    }

    @Test(arguments: 0..<instructions.count)
    func setBitIsGeneralProtection(_ index: Int) throws {
        let (name, code, _) = Self.instructions[index]
        let exits = try expectSameExits(IOBitmapGuest.make(bitmap: IOBitmapGuest.denying(0x80), user: code))
        #expect(exits == IOBitmapGuest.generalProtection, "\(name)")
    }

    /// A word at port 0x87 needs the bits of 0x87 and 0x88, in two bitmap bytes.
    @Test func wordAccessChecksEveryPortBitAcrossBytes() throws {
        let code: [UInt8] = [0x66, 0xBA, 0x87, 0x00, 0x66, 0xED]  // mov dx, 0x87; in ax, dx
        let denied = try expectSameExits(IOBitmapGuest.make(bitmap: IOBitmapGuest.denying(0x88), user: code))
        #expect(denied == IOBitmapGuest.generalProtection)
        let other = try expectSameExits(IOBitmapGuest.make(bitmap: IOBitmapGuest.denying(0x86), user: code))
        #expect(other.first == "io in 0x87 size 2 value 0x0")
    }

    /// The port's bitmap byte must lie within the TSS limit (0x68 + 0x10 for
    /// port 0x80); the byte after it need not, as the host's KVM reads it.
    @Test(arguments: [(UInt32(0x77), false), (0x78, true), (0x79, true)])
    func bitmapByteBeyondTheTSSLimitIsGeneralProtection(limit: UInt32, allowed: Bool) throws {
        let exits = try expectSameExits(IOBitmapGuest.make(limit: limit, user: [0xE4, 0x80]))
        #expect(exits.first == (allowed ? "io in 0x80 size 1 value 0x0" : IOBitmapGuest.generalProtection[0]))
    }
}

/// The bitmap outside long mode and the IOPL rule, against the SDM.
@Suite("X86 I/O permission in protected mode")
struct IOPermissionTests {
    /// 32-bit protected mode at CPL 3: IOPL 3 allows every port without the
    /// bitmap; IOPL 0 consults it; a 16-bit TSS has none (#GP(0)).
    @Test func iopl3SkipsTheBitmapAndA16BitTSSHasNone() {
        func guest(flags: UInt32, tss16: Bool) -> SystemGuest {
            func push(_ value: UInt32) -> [UInt8] { [0x68] + withUnsafeBytes(of: value.littleEndian, Array.init) }
            var g = SystemGuest.protected32(code: [0x23, 0xC000, flags | 2, 0x1B, 0xC000].flatMap(push) + [0xCF])
            g.write([0xE6, 0x80, 0xF4], at: SystemGuest.userCode)  // out 0x80, al; hlt
            g.write([0x58, 0xE7, 0x3D, 0xF4], at: SystemGuest.handlers + 0xD0)
            g.gate32(13, handler: UInt32(SystemGuest.handlers + 0xD0))
            g.store64(SystemGuest.descriptor(type: 0xB, dpl: 0, s: false, db: false, base: UInt32(SystemGuest.tssAddress),
                                             limit: 0x100, g: false), at: SystemGuest.gdt + 0x28)
            g.special.tr.limit = 0x100
            g.write([0x68, 0x00], at: SystemGuest.tssAddress + 0x66)
            g.memory[SystemGuest.tssAddress + 0x68 + 0x10] = 1  // port 0x80 denied
            if tss16 {
                // SS0:SP0 where a 16-bit TSS has them.
                g.special.tr.type = 0x3
                g.write([0x00, 0xA0, 0x10, 0x00], at: SystemGuest.tssAddress + 2)
            }
            return g
        }
        #expect(guest(flags: 0x3000, tss16: false).runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x80 size 1 value 0x0")
        #expect(guest(flags: 0, tss16: false).runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3d size 4 value 0x0")
        var open = guest(flags: 0, tss16: true)
        open.memory[SystemGuest.tssAddress + 0x68 + 0x10] = 0
        #expect(open.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3d size 4 value 0x0", "a 16-bit TSS has no bitmap")
    }
}
