import CLinuxKVM
import Foundation
import GuestMemory
import KVMPlatform
import Testing
@testable import KVM
@testable import SoftKVM

/// Runs the guest until it halts, shuts down, fails, writes port 0xF1 (the
/// end of a guest that cannot use HLT) or gives `maxExits` exits; reads are
/// answered with 0x5A bytes, and `afterEach` sees every exit.
private func steps(_ guest: RealModeGuest, maxExits: Int = 40,
                   afterEach: (VCPUExit) throws -> Void = { _ in }) throws -> [RunStep] {
    var steps: [RunStep] = []
    for _ in 0..<maxExits {
        let exit = try guest.vcpu.runWithDeadline()
        steps.append(RunStep(exit: exit, registers: try guest.vcpu.registers(), special: try guest.vcpu.specialRegisters()))
        try afterEach(exit)
        switch exit {
        case .io(let io) where io.port == 0xF1:
            return steps
        case .io(let io) where io.direction == .in:
            try guest.vcpu.setInput(repeatElement(0x5A, count: io.length))
        case .mmio(let access) where !access.isWrite:
            try guest.vcpu.setInput(repeatElement(0x5A, count: Int(access.length)))
        case .io, .mmio:
            continue
        default:
            return steps
        }
    }
    return steps
}

private func expectSame<T: Equatable>(_ host: T, _ soft: T, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(soft == host, "\(what): host gave \(host), SoftKVM gave \(soft)", sourceLocation: sourceLocation)
}

/// The in-kernel devices KVM_RUN serves without an exit (ioeventfds,
/// coalesced zones, the PIC and IOAPIC) and the PIC's interrupts to the
/// BSP, on the host's /dev/kvm and on SoftKVM.
@Suite("KVM_RUN and the in-kernel devices on both backends", .enabled(if: HostKVM.isAvailable))
struct WiringDifferentialTests {
    /// A PIO ioeventfd, one with a datamatch, a 1-byte MMIO one and a
    /// length-less MMIO one: the matching writes signal and do not exit.
    @Test func ioeventfdWritesSignalWithoutExiting() throws {
        let code: [UInt8] = [
            0xB0, 0x42,                          // mov al, 0x42
            0xBA, 0x00, 0x03,                    // mov dx, 0x300
            0xEE,                                // out dx, al          (ioeventfd)
            0xB0, 0x41,                          // mov al, 0x41
            0xBA, 0x04, 0x03,                    // mov dx, 0x304
            0xEE,                                // out dx, al          (no datamatch: exits)
            0xB0, 0x42,                          // mov al, 0x42
            0xEE,                                // out dx, al          (datamatch)
            0xB8, 0x00, 0x20,                    // mov ax, 0x2000
            0x8E, 0xD8,                          // mov ds, ax
            0xC6, 0x06, 0x10, 0x00, 0x5A,        // mov byte [0x10], 0x5a
            0xC7, 0x06, 0x20, 0x00, 0x34, 0x12,  // mov word [0x20], 0x1234
            0xE6, 0xF1,                          // out 0xf1, al
        ]
        func run(_ backend: Backend) throws -> ([RunStep], [Bool]) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code)
            let fds = try (0..<4).map { _ in try EventFD(nonBlocking: true) }
            try guest.vm.registerIOEventFD(fds[0], address: 0x300, length: 1, space: .pio)
            try guest.vm.registerIOEventFD(fds[1], address: 0x304, length: 1, space: .pio, datamatch: 0x42)
            try guest.vm.registerIOEventFD(fds[2], address: 0x20010, length: 1, space: .mmio)
            try guest.vm.registerIOEventFD(fds[3], address: 0x20020, length: 0, space: .mmio)
            let run = try steps(guest)
            return (run, fds.map { $0.isSignaled() })
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0.map(\.exit) == [
            .io(PortIO(direction: .out, port: 0x304, size: 1, value: 0x41)),
            .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x00)),
        ])
        #expect(host.1 == [true, true, true, true])
        expectSame(host.0, soft.0, "exits and registers")
        expectSame(host.1, soft.1, "eventfds signalled")
    }

    /// Coalesced MMIO and PIO: writes go to the ring without exiting; once
    /// the ring is full each write exits, until user space drains it.
    @Test func coalescedWritesFillTheRingThenExit() throws {
        let code: [UInt8] = [
            0xB8, 0x00, 0x20,        // mov ax, 0x2000
            0x8E, 0xD8,              // mov ds, ax
            0xB9, 0xC8, 0x00,        // mov cx, 200
            0x88, 0x0E, 0x10, 0x00,  // again: mov [0x10], cl
            0xE2, 0xFA,              // loop again
            0xB0, 0x77,              // mov al, 0x77
            0xBA, 0x00, 0x03,        // mov dx, 0x300
            0xEE,                    // out dx, al
            0xE6, 0xF1,              // out 0xf1, al
        ]
        func run(_ backend: Backend) throws -> ([RunStep], [[CoalescedWrite]]) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code)
            try guest.vm.registerCoalescedMMIO(address: 0x20000, size: 0x1000)
            try guest.vm.registerCoalescedMMIO(address: 0x300, size: 4, space: .pio)
            var drained: [[CoalescedWrite]] = []
            let run = try steps(guest) { _ in drained.append(guest.vm.drainCoalescedMMIO(from: guest.vcpu)) }
            return (run, drained)
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0.map(\.exit) == [
            .mmio(MMIOAccess(address: 0x20010, length: 1, isWrite: true, data: (31, 0, 0, 0, 0, 0, 0, 0))),
            .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x77)),
        ])
        #expect(host.1.map(\.count) == [169, 31])
        expectSame(host.0, soft.0, "exits and registers")
        expectSame(host.1, soft.1, "ring contents")
    }

    /// With an in-kernel irqchip the PIC's ports and the IOAPIC's page are
    /// served in the kernel: ICW1-4 and the mask, the IOAPIC's version and
    /// a redirection entry, read back with no exit.
    @Test func picPortsAndIOAPICPageNeverExit() throws {
        let code: [UInt8] = [
            0xE4, 0x21,                                                  // in al, 0x21
            0x88, 0xC3,                                                  // mov bl, al
            0xB0, 0x11, 0xE6, 0x20,                                      // ICW1
            0xB0, 0x20, 0xE6, 0x21,                                      // ICW2: base 0x20
            0xB0, 0x04, 0xE6, 0x21,                                      // ICW3
            0xB0, 0x01, 0xE6, 0x21,                                      // ICW4
            0xB0, 0xEF, 0xE6, 0x21,                                      // mask all but IRQ 4
            0xE4, 0x21,                                                  // in al, 0x21
            0x88, 0xC7,                                                  // mov bh, al
            0xC7, 0x05, 0x00, 0x00, 0xC0, 0xFE, 0x01, 0x00, 0x00, 0x00,  // IOREGSEL = 1
            0x8B, 0x0D, 0x10, 0x00, 0xC0, 0xFE,                          // mov ecx, IOWIN
            0xC7, 0x05, 0x00, 0x00, 0xC0, 0xFE, 0x10, 0x00, 0x00, 0x00,  // IOREGSEL = 0x10
            0xC7, 0x05, 0x10, 0x00, 0xC0, 0xFE, 0x30, 0x00, 0x01, 0x00,  // IOWIN = 0x10030
            0x8B, 0x15, 0x10, 0x00, 0xC0, 0xFE,                          // mov edx, IOWIN
            0xE6, 0xF1,                                                  // out 0xf1, al
        ]
        func run(_ backend: Backend) throws -> ([RunStep], [UInt8]) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code, irqchip: true)
            try enterProtectedMode(guest, gates: [])
            let run = try steps(guest)
            return (run, try guest.vm.irqchipState(.picMaster).bytes)
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0.count == 1)
        let registers = try #require(host.0.first?.registers)
        #expect(registers.rbx & 0xFF00 == 0xEF00)
        #expect(registers.rcx == 0x0017_0011)
        #expect(registers.rdx == 0x0001_0030)
        expectSame(host.0, soft.0, "exits and registers")
        expectSame(host.1, soft.1, "master PIC state")
    }

    enum Raise: String, CaseIterable, CustomTestStringConvertible {
        case irqLine, irqfd
        var testDescription: String { rawValue }
    }

    /// A real-mode guest programs the PIC (base 0x20, only IRQ 4 unmasked),
    /// does STI; HLT, and IRQ 4 is raised from another thread while it is
    /// halted: the handler at IVT entry 0x24 runs (its `out` is the next
    /// exit, with the interrupt's frame on the stack), EOIs in the kernel
    /// and IRETs to after the HLT.
    @Test(arguments: Raise.allCases)
    func picInterruptWakesAHaltedGuest(_ raise: Raise) throws {
        let code: [UInt8] = [
            0xB0, 0x11, 0xE6, 0x20,  // ICW1
            0xB0, 0x20, 0xE6, 0x21,  // ICW2: base 0x20
            0xB0, 0x04, 0xE6, 0x21,  // ICW3
            0xB0, 0x01, 0xE6, 0x21,  // ICW4
            0xB0, 0xEF, 0xE6, 0x21,  // mask all but IRQ 4
            0xFB,                    // sti
            0xF4,                    // hlt
            0xB0, 0x99, 0xE6, 0xF1,  // mov al, 0x99; out 0xf1, al
        ]
        func run(_ backend: Backend) throws -> ([RunStep], [UInt8], [UInt8]) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code, irqchip: true)
            try guest.memory.store(UInt32(0x0000_2000), at: 0x24 * 4)
            // mov al, 0x77; out 0x30, al; mov al, 0x20; out 0x20, al (EOI); iret
            try guest.memory.write([0xB0, 0x77, 0xE6, 0x30, 0xB0, 0x20, 0xE6, 0x20, 0xCF], at: 0x2000)
            let eventFD = try EventFD(nonBlocking: true)
            if raise == .irqfd { try guest.vm.registerIRQFD(eventFD, gsi: 4) }
            let vm = guest.vm
            let raised = DispatchSemaphore(value: 0)
            let raiser = Thread {
                // Long enough for the guest to reach HLT on either backend.
                Thread.sleep(forTimeInterval: 0.3)
                switch raise {
                case .irqLine:
                    try? vm.setIRQLine(4, level: true)
                    try? vm.setIRQLine(4, level: false)
                case .irqfd:
                    try? eventFD.signal()
                }
                raised.signal()
            }
            raiser.start()
            // The frame as the handler's first exit sees it.
            var stack: [UInt8]?
            let run = try steps(guest, maxExits: 4) { _ in
                if stack == nil { stack = try guest.memory.read(at: 0x8000 - 6, count: 6) }
            }
            // The woken guest can reach its last exit before the raiser has
            // lowered the line (SoftKVM wakes fast): read the chip only after.
            raised.wait()
            // An irqfd's pulse (raise, then lower) is injected asynchronously
            // by both kernels' irqfd workers: the woken guest can finish
            // before the lowering, so wait for the line (last_irr bit 4) to drop.
            var state = try guest.vm.irqchipState(.picMaster).bytes
            let deadline = Date(timeIntervalSinceNow: 2)
            while raise == .irqfd && state[0] & 0x10 != 0 && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.001)
                state = try guest.vm.irqchipState(.picMaster).bytes
            }
            return (run, stack ?? [], state)
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0.map(\.exit) == [
            .io(PortIO(direction: .out, port: 0x30, size: 1, value: 0x77)),
            .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x99)),
        ])
        #expect(host.0.first?.registers.rsp == 0x8000 - 6)
        // The frame: the IP after HLT, CS 0, FLAGS with IF.
        #expect(host.1.count == 6 && host.1[0] == 0x16 && host.1[1] == 0x10 && host.1[2] == 0 && host.1[3] == 0 && host.1[5] & 0x02 != 0)
        expectSame(host.0, soft.0, "exits and registers")
        expectSame(host.1, soft.1, "interrupt frame")
        expectSame(host.2, soft.2, "master PIC state at the end")
    }

    /// IRQ 4 is raised while the guest runs with IF clear (it has exited to
    /// user space); STI; HLT then takes it after HLT, not before, because of
    /// STI's one-instruction shadow: the frame's IP is past the HLT.
    @Test func pendingInterruptIsTakenAfterTheSTIShadow() throws {
        let code: [UInt8] = [
            0xB0, 0x11, 0xE6, 0x20,  // ICW1
            0xB0, 0x20, 0xE6, 0x21,  // ICW2: base 0x20
            0xB0, 0x04, 0xE6, 0x21,  // ICW3
            0xB0, 0x01, 0xE6, 0x21,  // ICW4
            0xB0, 0xEF, 0xE6, 0x21,  // mask all but IRQ 4
            0xE6, 0x10,              // out 0x10, al: user space raises IRQ 4 here
            0xFB,                    // sti
            0xF4,                    // hlt
            0xB0, 0x99, 0xE6, 0xF1,  // mov al, 0x99; out 0xf1, al
        ]
        func run(_ backend: Backend) throws -> ([RunStep], [UInt8]) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code, irqchip: true)
            try guest.memory.store(UInt32(0x0000_2000), at: 0x24 * 4)
            try guest.memory.write([0xB0, 0x77, 0xE6, 0x30, 0xB0, 0x20, 0xE6, 0x20, 0xCF], at: 0x2000)
            var stack: [UInt8]?
            let run = try steps(guest, maxExits: 4) { exit in
                if exit == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 0xEF)) {
                    try guest.vm.setIRQLine(4, level: true)
                    try guest.vm.setIRQLine(4, level: false)
                } else if stack == nil {
                    stack = try guest.memory.read(at: 0x8000 - 6, count: 6)
                }
            }
            return (run, stack ?? [])
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0.map(\.exit) == [
            .io(PortIO(direction: .out, port: 0x10, size: 1, value: 0xEF)),
            .io(PortIO(direction: .out, port: 0x30, size: 1, value: 0x77)),
            .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x99)),
        ])
        #expect(host.1.count == 6 && host.1[0] == 0x18 && host.1[1] == 0x10)
        expectSame(host.0, soft.0, "exits and registers")
        expectSame(host.1, soft.1, "interrupt frame")
    }

    /// HLT with IF clear and an irqchip: KVM_RUN blocks (no KVM_EXIT_HLT)
    /// until a kick ends it with EINTR; the vCPU stays halted, and the next
    /// KVM_RUN blocks again.
    @Test func haltWithInterruptsOffBlocksUntilAKick() throws {
        func run(_ backend: Backend) throws -> [String] {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: [0xFA, 0xF4], irqchip: true)
            let first = try guest.vcpu.runWithDeadline(seconds: 0.3)
            let state = try guest.vcpu.mpState()
            let second = try guest.vcpu.runWithDeadline(seconds: 0.3)
            return ["\(first)", "\(state)", "\(second)", "\(try guest.vcpu.registers().rip)"]
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host[0] == "\(VCPUExit.interrupted)")
        expectSame(host, soft, "exits and state")
    }

    /// KVM_INTERRUPT is for a user-space PIC: with the in-kernel one it is
    /// refused with ENXIO.
    @Test func userSpaceInterruptWithAnIrqchipGivesENXIO() throws {
        func run(_ backend: Backend) throws -> Outcome {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: [0xF4], irqchip: true)
            return outcome { () throws(KVMError) in try guest.vcpu.injectInterrupt(vector: 0x20) }
        }
        let host = try run(.host)
        #expect(host == .failed(.noSuchAddressOrDevice))
        expectSame(host, try run(.soft), "KVM_INTERRUPT")
    }
}

@Suite("HLT with an in-kernel irqchip on SoftKVM")
struct SoftHaltTests {
    /// The halted vCPU sleeps: the thread inside KVM_RUN uses almost no CPU
    /// time over half a second of HLT before the kick ends it.
    @Test func haltedVCPUSleepsInsteadOfSpinning() throws {
        let guest = try RealModeGuest(hypervisor: Backend.soft.hypervisor(), code: [0xFA, 0xF4], irqchip: true)
        func threadCPUTime() -> Double {
            var time = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
            return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
        }
        let before = threadCPUTime()
        #expect(try guest.vcpu.runWithDeadline(seconds: 0.5) == .interrupted)
        let used = threadCPUTime() - before
        #expect(used < 0.1, "KVM_RUN used \(used) s of CPU time while halted")
        #expect(try guest.vcpu.mpState() == .halted)
    }
}
