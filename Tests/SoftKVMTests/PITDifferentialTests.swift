import CLinuxKVM
import Foundation
import Glibc
import GuestMemory
import SystemPackage
import Testing
@testable import KVM
@testable import SoftKVM

// The in-kernel 8254 PIT on the host's /dev/kvm and on SoftKVM: its
// requests' errno, its state after the same port accesses, and a guest
// that takes counter 0's interrupts through the PIC.

/// The PIT's state as text, with what depends on when it ran left out:
/// count_load_time only says whether it is set, and `maskOut` bits of
/// counters 1 and 2's latched status (their output) are dropped.
private func describe(_ state: PITState, maskOut: UInt8 = 0) -> String {
    let channels = state.channels.enumerated().map { index, c in
        let status = index == 0 ? c.status : c.status & ~maskOut
        return "[count \(String(c.count, radix: 16)) latched \(String(c.latchedCount, radix: 16))/\(c.countLatched) "
            + "status \(String(status, radix: 16))/\(c.statusLatched) read \(c.readState) write \(c.writeState) "
            + "latch \(String(c.writeLatch, radix: 16)) rw \(c.readWriteMode) mode \(c.mode) bcd \(c.bcd) gate \(c.gate) "
            + "loaded \(c.countLoadTime == 0 ? "0" : "set")]"
    }
    return channels.joined(separator: " ") + " flags \(String(state.flags.rawValue, radix: 16))"
}

private func pitState(_ vm: VirtualMachine, maskOut: UInt8 = 0) -> String {
    do throws(KVMError) {
        return describe(try vm.pitState(), maskOut: maskOut)
    } catch {
        return error.errno.symbolicName
    }
}

private func result(_ body: () throws(KVMError) -> Void) -> String { outcome(body).description }

private func raw(_ hypervisor: Hypervisor, _ vm: VirtualMachine, _ request: KVMRequest, _ pointer: UnsafeMutableRawPointer?) -> Outcome {
    rawOutcome(hypervisor.handle.backend, vm.rawDescriptor, request.number, pointer)
}

/// Runs `scenario` on the host and on SoftKVM and expects the same named results.
private func expectSameResults(
    _ scenario: (Hypervisor) throws -> [(String, String)], sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let host = try scenario(Backend.host.hypervisor())
    let soft = try scenario(Backend.soft.hypervisor())
    #expect(host.map(\.0) == soft.map(\.0), sourceLocation: sourceLocation)
    for ((name, expected), (_, actual)) in zip(host, soft) {
        #expect(actual == expected, "\(name): host gave \(expected), SoftKVM gave \(actual)", sourceLocation: sourceLocation)
    }
}

/// Runs `guest` until it writes port 0xF1 or gives `maxExits` exits
/// (reads are answered with 0x5A bytes): the exits, in order.
private func runToEnd(_ guest: RealModeGuest, maxExits: Int = 40, seconds: Double = 5,
                      afterEach: (VCPUExit) throws -> Void = { _ in }) throws -> [VCPUExit] {
    var exits: [VCPUExit] = []
    for _ in 0..<maxExits {
        let exit = try guest.vcpu.runWithDeadline(seconds: seconds)
        exits.append(exit)
        try afterEach(exit)
        switch exit {
        case .io(let io) where io.port == 0xF1:
            return exits
        case .io(let io) where io.direction == .in:
            try guest.vcpu.setInput(repeatElement(0x5A, count: io.length))
        case .io, .mmio:
            continue
        default:
            return exits
        }
    }
    return exits
}

/// Real-mode code, assembled by hand.
private enum Code {
    static func out(_ port: UInt8, _ value: UInt8) -> [UInt8] { [0xB0, value, 0xE6, port] }
    /// in al, port; stosb (to ES:DI, then DI + 1).
    static func inStore(_ port: UInt8) -> [UInt8] { [0xE4, port, 0xAA] }
    static let end: [UInt8] = [0xB0, 0x99, 0xE6, 0xF1]
    /// Where `inStore` writes, from the guest's start.
    static let results = 0x3000
    static let start: [UInt8] = [0xFC, 0xBF, 0x00, 0x30]  // cld; mov di, 0x3000
}

/// The PIC at vector base 0x20 with only IRQ 0 unmasked, as the guests
/// that take the PIT's interrupt set it.
private let picInit: [UInt8] = Code.out(0x20, 0x11) + Code.out(0x21, 0x20) + Code.out(0x21, 0x04)
    + Code.out(0x21, 0x01) + Code.out(0x21, 0xFE)

@Suite("SoftKVM's PIT against the host", .enabled(if: HostKVM.isAvailable))
struct PITDifferentialTests {
    @Test(arguments: [Capability.pit, .pit2, .pitState2, .reinjectControl])
    func pitCapabilityAgrees(_ capability: Capability) throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            let system = outcome { () throws(KVMError) in try hypervisor.checkExtension(capability) }
            #expect(system == .ok(1))
            return [
                ("system", system),
                ("VM", outcome { () throws(KVMError) in try vm.checkExtension(capability) }),
            ]
        }
    }

    /// Creation's errno: ENOENT without the PIC, EFAULT for a bad config,
    /// EEXIST for a second PIT (legacy or not); unknown flags are accepted.
    /// The state requests' order of checks: ENXIO before the pointer for
    /// KVM_GET_PIT2, EFAULT first for the others.
    @Test func creationAndStateRequestErrnoAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            let bad = UnsafeMutableRawPointer(bitPattern: 8)
            // Zeros: a valid config, state or reinject control for every request.
            let zeros = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 8)
            zeros.initializeMemory(as: UInt8.self, repeating: 0, count: 512)
            let config = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 8)
            config.initializeMemory(as: UInt8.self, repeating: 0, count: 512)
            config.storeBytes(of: UInt32.max, as: UInt32.self)  // kvm_pit_config.flags: every bit
            defer {
                zeros.deallocate()
                config.deallocate()
            }
            let steps: [(String, KVMRequest, UnsafeMutableRawPointer?)] = [
                ("create without irqchip", .createPIT2, config),
                ("legacy create without irqchip", .createPIT, nil),
                ("get2 without PIT", .getPIT2, zeros),
                ("get2 without PIT, bad pointer", .getPIT2, bad),
                ("set2 without PIT, bad pointer", .setPIT2, bad),
                ("set2 without PIT", .setPIT2, zeros),
                ("get without PIT, bad pointer", .getPIT, bad),
                ("get without PIT", .getPIT, zeros),
                ("set without PIT", .setPIT, zeros),
                ("reinject without PIT", .reinjectControl, zeros),
                ("reinject without PIT, bad pointer", .reinjectControl, bad),
            ]
            var trace = steps.map { ($0.0, raw(hypervisor, vm, $0.1, $0.2)) }
            try vm.createIrqchip()
            let after: [(String, KVMRequest, UnsafeMutableRawPointer?)] = [
                ("create, bad pointer", .createPIT2, bad),
                ("create with every flag", .createPIT2, config),
                ("create again", .createPIT2, config),
                ("legacy create again", .createPIT, nil),
                ("get2, bad pointer", .getPIT2, bad),
                ("set2, bad pointer", .setPIT2, bad),
                ("get, bad pointer", .getPIT, bad),
                ("set, bad pointer", .setPIT, bad),
                ("reinject, bad pointer", .reinjectControl, bad),
                ("reinject", .reinjectControl, zeros),
            ]
            trace += after.map { ($0.0, raw(hypervisor, vm, $0.1, $0.2)) }
            return trace
        }
    }

    /// The legacy request makes a PIT too, with the speaker device: port
    /// 0x61 no longer exits.
    @Test func legacyCreateServesThePortSpeaker() throws {
        func run(_ backend: Backend) throws -> ([VCPUExit], String) {
            let hypervisor = try backend.hypervisor()
            let code = Code.start + Code.out(0x61, 0x03) + Code.inStore(0x61) + Code.out(0x62, 0x01) + Code.end
            let guest = try RealModeGuest(hypervisor: hypervisor, code: code, irqchip: true)
            #expect(raw(hypervisor, guest.vm, .createPIT, nil) == .ok(0))
            let exits = try runToEnd(guest)
            // Bit 4 is the refresh clock, which toggles with time, and bit 5
            // counter 2's output, which rises 55 ms after creation (mode 0xff counts as 0).
            let speaker = try guest.memory.read(at: Code.results, count: 1)[0] & ~0x30
            return (exits, "speaker \(String(speaker, radix: 16)) " + pitState(guest.vm))
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0 == [
            .io(PortIO(direction: .out, port: 0x62, size: 1, value: 1)),
            .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x99)),
        ])
        #expect(soft.0 == host.0)
        #expect(soft.1 == host.1)
    }

    /// Without KVM_PIT_SPEAKER_DUMMY, port 0x61 is user space's.
    @Test func speakerPortExitsWithoutTheDummyFlag() throws {
        func run(_ backend: Backend) throws -> [VCPUExit] {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: Code.out(0x61, 0x03) + Code.end, irqchip: true)
            try guest.vm.createPIT()
            return try runToEnd(guest)
        }
        let host = try run(.host)
        #expect(host.first == .io(PortIO(direction: .out, port: 0x61, size: 1, value: 3)))
        #expect(try run(.soft) == host)
    }

    @Test func initialStateAgrees() throws {
        func run(_ backend: Backend) throws -> String {
            let vm = try backend.hypervisor().createVM()
            try vm.createIrqchip()
            let before = ktime_get()
            try vm.createPIT(flags: .speakerDummy)
            let after = ktime_get()
            let state = try vm.pitState()
            // Counters 1 and 2 were loaded at creation, on the monotonic clock.
            for channel in 1...2 {
                #expect((before...after).contains(state.channels[channel].countLoadTime), "\(backend) counter \(channel)")
            }
            return describe(state)
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.contains("mode 255"))
        #expect(soft == host)
    }

    /// KVM_SET_PIT2 keeps what it is given (a count above 16 bits, a mode
    /// beyond 5, every flag) and reloads the counts: 0 reads back as 0x10000,
    /// and counters 1 and 2 get a new load time. KVM_SET_PIT leaves the flags.
    @Test func setStateKeepsWhatItIsGiven() throws {
        try expectSameResults { hypervisor in
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            try vm.createPIT()
            var state = try vm.pitState()
            state.channels[0].count = 0x12345
            state.channels[0].mode = 9
            state.channels[0].latchedCount = 0x4321
            state.channels[0].countLatched = 3
            state.channels[1].count = 0
            state.channels[1].mode = 2
            state.channels[1].countLoadTime = 0
            state.channels[2].status = 0x77
            state.channels[2].statusLatched = 1
            state.channels[2].writeState = 4
            state.channels[2].writeLatch = 0xAB
            state.flags = PITStateFlags(rawValue: 0xFFFF_FFFF)
            try vm.setPITState(state)
            var trace = [("after set2", pitState(vm))]
            var legacy = kvm_pit_state()
            trace.append(("legacy get", raw(hypervisor, vm, .getPIT, &legacy).description))
            legacy.channels.0.count = 0
            legacy.channels.0.mode = 2
            trace.append(("legacy set", raw(hypervisor, vm, .setPIT, &legacy).description))
            trace.append(("after legacy set", pitState(vm)))
            return trace
        }
    }

    /// Counter 0 frozen (the HPET legacy flag keeps its timer off, so its
    /// count does not move): every port access's effect on the state and
    /// every value read back agree. Lobyte/hibyte sequencing, LSB and MSB
    /// only, the latch command, read-back of count and status, BCD, modes
    /// 6 and 7, a second latch before the first is read, wider accesses
    /// inside and across the PIT's ports, and port 0x43, which does not answer.
    @Test func portAccessesToAFrozenCounterAgree() throws {
        var code = Code.start
        code += Code.out(0x43, 0x34) + Code.out(0x40, 0x34) + Code.out(0x40, 0x12)  // ch0 lo/hi mode 2: 0x1234
        code += Code.inStore(0x40) + Code.inStore(0x40) + Code.inStore(0x40)
        code += Code.out(0x43, 0x00) + Code.out(0x43, 0x00)  // latch twice
        code += Code.inStore(0x40) + Code.inStore(0x40)
        code += Code.out(0x43, 0xC2) + Code.inStore(0x40) + Code.inStore(0x40) + Code.inStore(0x40)  // read-back ch0
        code += Code.out(0x43, 0xE2) + Code.inStore(0x40) + Code.inStore(0x40)  // status only
        code += Code.out(0x43, 0x10) + Code.out(0x40, 0x55) + Code.inStore(0x40) + Code.inStore(0x40)  // LSB, mode 0
        code += Code.out(0x43, 0x20) + Code.out(0x40, 0x66) + Code.inStore(0x40) + Code.inStore(0x40)  // MSB
        code += Code.out(0x43, 0x37) + Code.out(0x40, 0x99) + Code.out(0x40, 0x98)  // BCD mode 3: 9899
        code += Code.out(0x43, 0x00) + Code.inStore(0x40) + Code.inStore(0x40)
        code += Code.out(0x43, 0x3C) + Code.out(0x43, 0x0F)  // mode 6 (is 2); mode 7 with access 0: a latch
        code += Code.out(0x43, 0x3A) + Code.out(0x40, 0x00) + Code.out(0x40, 0x00)  // mode 5, count 0
        code += Code.inStore(0x40) + Code.inStore(0x40)
        code += [0xE5, 0x40, 0xAB]  // in ax, 0x40; stosw
        code += [0x66, 0xE5, 0x40, 0x66, 0xAB]  // in eax, 0x40; stosd
        code += Code.out(0x40, 0x44)
        code += Code.inStore(0x43)  // port 0x43 does not answer: what the last read gave, not what was written
        code += [0xE5, 0x43, 0xAB]  // in ax, 0x43: beyond the PIT's ports, an exit
        code += [0xB8, 0x21, 0x43, 0xE7, 0x42]  // mov ax, 0x4321; out 0x42, ax: the low byte to counter 2
        code += Code.out(0x43, 0x74) + Code.out(0x41, 0x11)  // ch1 lo/hi: the low byte, awaiting the high
        code += Code.out(0x43, 0xEC) + Code.inStore(0x41) + Code.inStore(0x42)  // ch1, ch2 status
        code += Code.end
        func run(_ backend: Backend) throws -> ([VCPUExit], [UInt8], String) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code, irqchip: true)
            try guest.vm.createPIT(flags: .speakerDummy)
            var state = try guest.vm.pitState()
            state.flags = .hpetLegacy
            try guest.vm.setPITState(state)
            let exits = try runToEnd(guest)
            var results = try guest.memory.read(at: Code.results, count: 29)
            // Counters 1 and 2's output depends on how long they have counted.
            results[27] &= 0x7F
            results[28] &= 0x7F
            return (exits, results, pitState(guest.vm, maskOut: 0x80))
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0 == [
            .io(PortIO(direction: .in, port: 0x43, size: 2, value: 0)),
            .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x99)),
        ])
        #expect(Array(host.1.prefix(3)) == [0x34, 0x12, 0x34])
        #expect(soft.0 == host.0)
        #expect(soft.1 == host.1, "host read \(host.1), SoftKVM read \(soft.1)")
        #expect(soft.2 == host.2)
    }

    /// Counter 2 gated on through port 0x61 counts down from its load: the
    /// count read back is below the programmed one and its output is low
    /// (mode 0, a long count), on both. Then a short count, and the guest
    /// polls port 0x61 until counter 2's output rises, as Linux's TSC
    /// calibration does.
    @Test func counterTwoCountsAndItsOutputRisesOnPort61() throws {
        var code = Code.start
        code += Code.out(0x61, 0x01)  // gate on, speaker data off
        code += Code.out(0x43, 0xB0) + Code.out(0x42, 0xFF) + Code.out(0x42, 0xFF)  // ch2 lo/hi mode 0: 0xFFFF
        code += Code.inStore(0x42) + Code.inStore(0x42) + Code.inStore(0x61)
        code += Code.out(0x43, 0xB0) + Code.out(0x42, 0xA9) + Code.out(0x42, 0x04)  // 1193: 1 ms
        // wait: in al, 0x61; test al, 0x20; jz wait
        code += [0xE4, 0x61, 0xA8, 0x20, 0x74, 0xFA]
        code += [0xAA]  // stosb the 0x61 value with OUT2 high
        code += Code.end
        func run(_ backend: Backend) throws -> ([VCPUExit], [UInt8], Double) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code, irqchip: true)
            try guest.vm.createPIT(flags: .speakerDummy)
            let start = ktime_get()
            let exits = try runToEnd(guest)
            let seconds = Double(ktime_get() - start) / 1e9
            return (exits, try guest.memory.read(at: Code.results, count: 4), seconds)
        }
        for backend in Backend.available {
            let (exits, results, seconds) = try run(backend)
            #expect(exits == [.io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x99))], "\(backend)")
            let count = Int(results[0]) | Int(results[1]) << 8
            // At most a few hundred microseconds went by: a few hundred ticks,
            // or none at all (a tick is 838 ns, and SoftKVM runs the out,
            // out, in in less).
            #expect(count <= 0xFFFF && count > 0xFFFF - 1193 * 50, "\(backend): count read back 0x\(String(count, radix: 16))")
            #expect(results[2] & ~0x10 == 0x01, "\(backend): port 0x61 read 0x\(String(results[2], radix: 16))")
            #expect(results[3] & ~0x10 == 0x21, "\(backend): port 0x61 after the wait 0x\(String(results[3], radix: 16))")
            #expect(seconds >= 0.001, "\(backend): OUT2 rose after \(seconds) s")
        }
    }

    /// Counter 0 in mode 2 at 100 Hz, IRQ 0 through the PIC: the guest
    /// halts with interrupts on, and its handler counts ticks and EOIs;
    /// after five it ends. Five ticks take about 50 ms on both backends.
    @Test func periodicCounterZeroInterruptsAHaltedGuest() throws {
        let main = Code.start + picInit
            + Code.out(0x43, 0x34) + Code.out(0x40, 0x9C) + Code.out(0x40, 0x2E)  // 11932: 100 Hz
            + [0xFB]  // sti
            + [0xF4, 0x80, 0x3E, 0x00, 0x30, 0x05, 0x72, 0xF8]  // wait: hlt; cmp byte [0x3000], 5; jb wait
            + Code.end
        // inc byte [0x3000]; EOI; iret
        let handler: [UInt8] = [0xFE, 0x06, 0x00, 0x30] + Code.out(0x20, 0x20) + [0xCF]
        func run(_ backend: Backend) throws -> ([VCPUExit], UInt8, Double, String) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: main, irqchip: true)
            try guest.vm.createPIT(flags: .speakerDummy)
            try guest.memory.store(UInt32(0x0000_2000), at: 0x20 * 4)
            try guest.memory.write(handler, at: 0x2000)
            let start = ktime_get()
            let exits = try runToEnd(guest)
            let seconds = Double(ktime_get() - start) / 1e9
            let ticks = try guest.memory.read(at: Code.results, count: 1)[0]
            var state = try guest.vm.pitState()
            state.channels[0].countLoadTime = 0
            return (exits, ticks, seconds, describe(state))
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0 == [.io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x99))])
        #expect(soft.0 == host.0)
        #expect(soft.1 == 5 && host.1 == 5)
        for (name, seconds) in [("host", host.2), ("soft", soft.2)] {
            #expect(seconds > 0.045 && seconds < 1, "\(name): five ticks took \(seconds) s")
        }
        #expect(soft.3 == host.3)
    }

    enum Reinjection: String, CaseIterable, CustomTestStringConvertible {
        /// The default: ticks the guest missed are injected one per EOI.
        case on
        /// KVM_REINJECT_CONTROL with 0: missed ticks are lost.
        case off
        /// On, but the guest masked IRQ 0 while it was away: unmasking forgets them.
        case onMaskedMeanwhile
        var testDescription: String { rawValue }
    }

    /// Counter 0 at 20 Hz; the guest leaves with interrupts off (an exit
    /// during which user space waits 400 ms, eight periods), then counts
    /// four ticks. With reinjection the missed ticks come one after each
    /// EOI, at once; without, or when the guest unmasked IRQ 0 after
    /// masking it, the PIC held one and the next three come a period apart.
    @Test(arguments: Reinjection.allCases)
    func missedTicksAreReinjectedOnePerEOI(_ reinjection: Reinjection) throws {
        let mask = reinjection == .onMaskedMeanwhile
        let main = Code.start + picInit
            + Code.out(0x43, 0x34) + Code.out(0x40, 0x0B) + Code.out(0x40, 0xE9)  // 59659: 50 ms
            + [0xFA]  // cli
            + (mask ? Code.out(0x21, 0xFF) : [])
            + Code.out(0x10, 0x00)  // user space waits here
            + (mask ? Code.out(0x21, 0xFE) : [])
            + [0xFB]  // sti
            + [0xF4, 0x80, 0x3E, 0x00, 0x30, 0x04, 0x72, 0xF8]  // wait: hlt; cmp byte [0x3000], 4; jb wait
            + Code.end
        let handler: [UInt8] = [0xFE, 0x06, 0x00, 0x30] + Code.out(0x20, 0x20) + [0xCF]
        func run(_ backend: Backend) throws -> ([VCPUExit], Double) {
            let hypervisor = try backend.hypervisor()
            let guest = try RealModeGuest(hypervisor: hypervisor, code: main, irqchip: true)
            try guest.vm.createPIT(flags: .speakerDummy)
            if reinjection == .off {
                let control = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
                defer { control.deallocate() }
                control.initializeMemory(as: UInt8.self, repeating: 0, count: 64)
                #expect(raw(hypervisor, guest.vm, .reinjectControl, control) == .ok(0))
            }
            try guest.memory.store(UInt32(0x0000_2000), at: 0x20 * 4)
            try guest.memory.write(handler, at: 0x2000)
            var resumed: Int64 = 0
            let exits = try runToEnd(guest) { exit in
                if exit == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 0)) {
                    usleep(400_000)
                    resumed = ktime_get()
                }
            }
            return (exits, Double(ktime_get() - resumed) / 1e9)
        }
        for backend in Backend.available {
            let (exits, seconds) = try run(backend)
            #expect(exits.last == .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x99)), "\(backend): \(exits)")
            if reinjection == .on {
                #expect(seconds < 0.05, "\(backend): four ticks took \(seconds) s after the wait")
            } else {
                // Three whole periods at least (the first tick comes anywhere
                // in its period), less a little for the clocks' skew: well
                // above reinjection's burst.
                #expect(seconds > 0.08, "\(backend): four ticks took \(seconds) s after the wait")
            }
        }
    }
}
