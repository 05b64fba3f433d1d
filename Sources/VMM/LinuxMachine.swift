import Devices
import Foundation
import GuestMemory
import KVM
import LinuxBoot
import Synchronization

/// How a machine ended when nothing went wrong, and the exit status the
/// CLI gives for it.
public enum MachineOutcome: Sendable, Equatable {
    /// The guest powered off (ACPI S5, or KVM's shutdown system event): status 0.
    case poweredOff
    /// The host stopped the machine (`stop()`, Ctrl-A x on the console): status 0.
    case stopped
    /// The guest reset the machine (i8042 pulse, 0xcf9, the FADT reset
    /// register, KVM's reset event), as `reboot` or a panic with `panic=-1`
    /// does. The machine does not reboot: it ends with status 2, so a
    /// script can tell a reboot or panic from a clean poweroff.
    case reset

    public var exitStatus: Int32 {
        switch self {
        case .poweredOff, .stopped: 0
        case .reset: 2
        }
    }
}

/// Why a machine could not be built or did not run to an outcome.
public enum MachineError: Error, CustomStringConvertible {
    case configuration(MachineConfigurationError)
    case kvm(KVMError)
    case memory(GuestMemoryError)
    case boot(LinuxBootError)
    case bus(BusError)
    case file(path: String, reason: String)
    /// The vCPU did not take the warm-up run before the boot state.
    case warmUp(vcpu: UInt32, exit: VCPUExit)
    /// A triple fault, or a shutdown KVM reported (`KVM_EXIT_SHUTDOWN`).
    case shutdown(vcpu: UInt32, rip: UInt64?)
    /// KVM could not go on (`KVM_EXIT_INTERNAL_ERROR`), for instance an instruction it cannot emulate.
    case internalError(vcpu: UInt32, rip: UInt64?, InternalError)
    /// The guest crashed as KVM reported it (`KVM_SYSTEM_EVENT_CRASH`).
    case guestCrash(vcpu: UInt32, rip: UInt64?)
    /// An exit the machine has no answer for.
    case unexpectedExit(vcpu: UInt32, rip: UInt64?, VCPUExit)

    public var description: String {
        func at(_ rip: UInt64?) -> String { rip.map { " at RIP 0x\(String($0, radix: 16))" } ?? "" }
        switch self {
        case .configuration(let error): return error.description
        case .kvm(let error): return error.description
        case .memory(let error): return error.description
        case .boot(let error): return "\(error)"
        case .bus(let error): return error.description
        case .file(let path, let reason): return "cannot read \(path): \(reason)"
        case .warmUp(let vcpu, let exit):
            return "vCPU \(vcpu) did not run its warm-up instruction before the boot state: it gave \(exit)"
        case .shutdown(let vcpu, let rip):
            // Reported as an error, not a reset: here a triple fault is far more
            // often a CPU or device bug than a kernel asked to reboot that way.
            return "vCPU \(vcpu) shut down\(at(rip)) (KVM_EXIT_SHUTDOWN): a triple fault, the guest's state was beyond repair (or a kernel with reboot=t rebooting: use reboot=k, the default, or reboot=a)"
        case .internalError(let vcpu, let rip, let error):
            let data = error.data.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
            return "vCPU \(vcpu) stopped\(at(rip)) with KVM_EXIT_INTERNAL_ERROR, suberror \(error.suberror) (1: an instruction KVM could not emulate), data [\(data)]"
        case .guestCrash(let vcpu, let rip):
            return "the guest reported a crash on vCPU \(vcpu)\(at(rip)) (KVM_SYSTEM_EVENT_CRASH)"
        case .unexpectedExit(let vcpu, let rip, let exit):
            return "vCPU \(vcpu) gave an exit the machine cannot answer\(at(rip)): \(exit)"
        }
    }
}

/// RAM as the boot loaders see it: one region from 0, and with more than
/// 3 GiB the rest in a second region from 4 GiB, leaving the PCI hole.
final class MachineMemory: GuestPhysicalMemory {
    let low: GuestMemoryRegion
    let high: GuestMemoryRegion?

    init(size: UInt64) throws(GuestMemoryError) {
        let lowSize = min(size, MemoryMap.lowMemoryTop)
        low = try GuestMemoryRegion(size: Int(lowSize))
        high = size > lowSize ? try GuestMemoryRegion(size: Int(size - lowSize)) : nil
    }

    var guestMemorySize: UInt64 { UInt64(low.size) }

    private func locate(_ address: UInt64, count: Int) throws(GuestMemoryError) -> (GuestMemoryRegion, Int) {
        if address < UInt64(low.size) { return (low, Int(address)) }
        if let high, address >= MemoryMap.fourGiB, let offset = Int(exactly: address - MemoryMap.fourGiB) {
            return (high, offset)
        }
        throw .outOfRange(offset: Int(clamping: address), count: count, size: low.size)
    }

    func writeGuest(_ bytes: some Collection<UInt8>, at address: UInt64) throws(GuestMemoryError) {
        let (region, offset) = try locate(address, count: bytes.count)
        try region.write(bytes, at: offset)
    }

    func readGuest(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        let (region, offset) = try locate(address, count: count)
        return try region.read(at: offset, count: count)
    }
}

/// The state vCPU threads and devices share to end the machine: the
/// first outcome (or error) wins, then every vCPU is kicked out of KVM_RUN.
final class MachineControl: @unchecked Sendable {
    let stopping = Atomic<Bool>(false)
    private let condition = NSCondition()
    private var result: Result<MachineOutcome, MachineError>?
    private var kickers: [VCPUKicker] = []
    private var runningThreads = 0

    func setKickers(_ kickers: [VCPUKicker]) {
        condition.withLock { self.kickers = kickers }
    }

    func finish(_ result: Result<MachineOutcome, MachineError>) {
        let kickers: [VCPUKicker] = condition.withLock {
            if self.result == nil { self.result = result }
            condition.broadcast()
            return self.kickers
        }
        stopping.store(true, ordering: .sequentiallyConsistent)
        for kicker in kickers { kicker.kick() }
    }

    func threadStarted() { condition.withLock { runningThreads += 1 } }

    func threadEnded() {
        condition.withLock {
            runningThreads -= 1
            condition.broadcast()
        }
    }

    var threadCount: Int { condition.withLock { runningThreads } }

    /// Blocks until an outcome is set and every vCPU thread has ended.
    func wait() -> Result<MachineOutcome, MachineError> {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let result, runningThreads == 0 { return result }
            condition.wait()
        }
    }

    /// Like `wait`, giving up after `timeout` seconds with nil.
    func wait(timeout: Double) -> Result<MachineOutcome, MachineError>? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let result, runningThreads == 0 { return result }
            if !condition.wait(until: deadline) { return nil }
        }
    }
}

/// The 16550 on COM1 and the host's bytes waiting for room in its FIFO:
/// the FIFO takes 16, a paste can be longer, so the rest goes in as the guest reads.
final class SerialPortDevice: BusDevice {
    let uart: Serial16550
    private var pending: [UInt8] = []
    private var pendingStart = 0

    init(uart: Serial16550) { self.uart = uart }

    func feed(_ bytes: some Sequence<UInt8>) {
        pending.append(contentsOf: bytes)
        topUp()
    }

    private func topUp() {
        let count = min(uart.receiveSpace, pending.count - pendingStart)
        guard count > 0 else { return }
        uart.receive(pending[pendingStart..<pendingStart + count])
        pendingStart += count
        if pendingStart == pending.count {
            pending.removeAll(keepingCapacity: true)
            pendingStart = 0
        }
    }

    func read(offset: UInt64, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for byte in 0..<size { value |= UInt64(uart.read(offset: Int(offset) + byte)) << (8 * UInt64(byte)) }
        if pendingStart < pending.count { topUp() }
        return value
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        for byte in 0..<size { uart.write(offset: Int(offset) + byte, value: UInt8(truncatingIfNeeded: value >> (8 * UInt64(byte)))) }
    }
}

/// The reset control register at 0xcf9 (PIIX/ICH): writing SYS_RST (bit 1)
/// with RST_CPU (bit 2) resets the machine; the FADT's reset register points here too.
final class ResetControlDevice: BusDevice {
    static let systemReset: UInt8 = 0x02
    static let resetCPU: UInt8 = 0x04
    private var value: UInt8 = 0
    private let reset: () -> Void
    init(reset: @escaping () -> Void) { self.reset = reset }
    func read(offset: UInt64, size: Int) -> UInt64 { UInt64(value) }
    func write(offset: UInt64, size: Int, value: UInt64) {
        let byte = UInt8(truncatingIfNeeded: value)
        if byte & Self.resetCPU != 0 {
            reset()
        } else {
            self.value = byte & Self.systemReset
        }
    }
}

/// What a vCPU thread holds, let go before the thread reports its end.
private final class ThreadReferences: @unchecked Sendable {
    private(set) var machine: LinuxMachine?
    private(set) var vcpu: VCPU?
    init(machine: LinuxMachine, vcpu: VCPU) {
        self.machine = machine
        self.vcpu = vcpu
    }
    func clear() {
        machine = nil
        vcpu = nil
    }
}

/// A PC that boots Linux: RAM with the legacy and PCI holes, the in-kernel
/// PIC, IOAPIC, LAPICs and PIT, the kernel, initrd, command line, zero page
/// and ACPI tables of `LinuxBoot`, and the legacy devices on the port bus:
/// COM1 (IRQ 4), the i8042 (reset), the RTC (IRQ 8), the ACPI PM registers
/// (poweroff, the SCI on IRQ 9), POST port 0x80 and reset control at 0xcf9.
/// One thread per vCPU runs it, and a device timer the RTC's and PM
/// timer's interrupts; the bus and devices are behind one lock.
public final class LinuxMachine: @unchecked Sendable {
    public static let tssAddress: UInt64 = 0xfffb_d000
    /// The page before the TSS's three, still outside RAM and below the IOAPIC.
    public static let identityMapAddress: UInt64 = 0xfffb_c000
    public static let com1Port: UInt16 = 0x3f8
    public static let com1IRQ: UInt32 = 4
    public static let keyboardIRQ: UInt32 = 1
    public static let auxIRQ: UInt32 = 12
    public static let rtcPort: UInt16 = 0x70
    public static let postPort: UInt16 = 0x80
    public static let resetControlPort: UInt16 = 0xcf9
    /// Where vCPU 0 runs one `out` before the boot state goes in (see `warmUp`).
    static let warmUpAddress: UInt64 = 0xf00
    static let warmUpPort: UInt16 = 0xf0

    public let configuration: MachineConfiguration
    public let vm: VirtualMachine
    public let vcpus: [VCPU]
    public let boot: PreparedLinuxBoot
    /// Port I/O and MMIO; touch them only with `withDevices`.
    public let ports = Bus()
    public let mmio = Bus()
    let memory: MachineMemory
    let control = MachineControl()
    private let deviceLock = NSLock()
    private let serial: SerialPortDevice
    /// The i8042, RTC, ACPI PM and the rest, and their timer; set while the machine is built.
    private var legacy: LegacyDevices?
    private let started = Atomic<Bool>(false)

    /// Builds the machine on `hypervisor`. `output` receives each byte the
    /// guest writes to COM1, on a vCPU thread.
    public init(configuration: MachineConfiguration, hypervisor: Hypervisor,
                output: @escaping @Sendable (UInt8) -> Void) throws(MachineError) {
        do { try configuration.validate() } catch { throw .configuration(error) }
        self.configuration = configuration
        let kernel = try Self.readFile(configuration.kernelPath)
        let initrd = try configuration.initrdPath.map { (path) throws(MachineError) in try Self.readFile(path) }

        do { memory = try MachineMemory(size: configuration.memorySize) } catch { throw .memory(error) }
        let bootConfiguration = LinuxBootConfiguration(kernel: kernel, initrd: initrd, commandLine: configuration.commandLine,
                                                       cpuCount: configuration.cpuCount, memorySize: configuration.memorySize)
        do { boot = try LinuxBoot.prepare(bootConfiguration, in: memory) } catch { throw .boot(error) }
        do { try memory.writeGuest([0xe6, UInt8(Self.warmUpPort)], at: Self.warmUpAddress) } catch { throw .memory(error) }

        do {
            vm = try hypervisor.createVM()
            try vm.setTSSAddress(Self.tssAddress)
            try vm.setIdentityMapAddress(Self.identityMapAddress)
            try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory.low)
            if let high = memory.high {
                try vm.setMemoryRegion(slot: 1, guestAddress: MemoryMap.fourGiB, region: high)
            }
            // The irqchip before any vCPU, so each gets an in-kernel LAPIC.
            try vm.createIrqchip()
            try vm.setGSIRouting(Self.gsiRouting)
            try vm.createPIT(flags: .speakerDummy)
            let supported = try hypervisor.supportedCPUID()
            var vcpus: [VCPU] = []
            for id in 0..<UInt32(configuration.cpuCount) {
                let vcpu = try vm.createVCPU(id: id)
                try vcpu.setCPUID(Self.cpuid(supported, apicID: id))
                vcpus.append(vcpu)
            }
            self.vcpus = vcpus
        } catch {
            throw .kvm(error)
        }

        let vm = self.vm
        let control = self.control
        func irq(_ line: UInt32) -> (Bool) -> Void {
            { level in
                do throws(KVMError) { try vm.setIRQLine(line, level: level) } catch { control.finish(.failure(.kvm(error))) }
            }
        }
        serial = SerialPortDevice(uart: Serial16550(interrupt: irq(Self.com1IRQ), output: output))
        try wireDevices(acpi: bootConfiguration.acpi, irq: irq)

        try warmUp(vcpus[0])
        do { try vcpus[0].applyBootState(boot.cpuState) } catch { throw .kvm(error) }
        control.setKickers(vcpus.map(\.kicker))
    }

    private static func readFile(_ path: String) throws(MachineError) -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .file(path: path, reason: "it does not exist or cannot be read")
        }
        return [UInt8](data)
    }

    /// The supported CPUID with this vCPU's APIC id where the kernel looks
    /// for it: leaf 1 EBX[31:24] (initial APIC id) and EDX of the x2APIC
    /// topology leaves 0xB and 0x1F, which Linux trusts over the MADT.
    static func cpuid(_ supported: [CPUIDEntry], apicID: UInt32) -> [CPUIDEntry] {
        supported.map { entry in
            var entry = entry
            switch entry.function {
            case 1: entry.ebx = entry.ebx & 0x00ff_ffff | apicID << 24
            case 0xb, 0x1f: entry.edx = apicID
            default: break
            }
            return entry
        }
    }

    /// `acpi` is what the tables were written with: the devices answer at the ports the FADT names.
    private func wireDevices(acpi: ACPIConfiguration, irq: (UInt32) -> (Bool) -> Void) throws(MachineError) {
        let control = self.control
        do {
            try ports.register(serial, at: UInt64(Self.com1Port), size: 8, name: "COM1 16550A")
            legacy = try LegacyDevices(acpi: acpi, ports: ports, deviceLock: deviceLock, irq: irq,
                                       reset: { control.finish(.success(.reset)) },
                                       powerOff: { control.finish(.success(.poweredOff)) })
        } catch {
            throw .bus(error)
        }
    }

    /// Runs one `out` in real mode before the boot state goes in (`VCPU.warmUp`).
    private func warmUp(_ vcpu: VCPU) throws(MachineError) {
        let unexpected: VCPUExit?
        do {
            unexpected = try vcpu.warmUp(at: Self.warmUpAddress, port: Self.warmUpPort)
        } catch {
            throw .kvm(error)
        }
        if let unexpected { throw .warmUp(vcpu: vcpu.id, exit: unexpected) }
    }

    /// Runs `body` with the devices locked, as the vCPU threads do.
    public func withDevices<T>(_ body: () throws -> T) rethrows -> T {
        deviceLock.lock()
        defer { deviceLock.unlock() }
        return try body()
    }

    /// Gives `bytes` to COM1's receiver, as typed on its line.
    public func sendInput(_ bytes: some Sequence<UInt8>) {
        withDevices { serial.feed(bytes) }
    }

    /// The GSI routing of a PC as the MADT describes it (QEMU's): ISA IRQs
    /// 0-15 to the PICs but for the cascade (2), and to the IOAPIC's pin
    /// of the same number, but for the PIT's IRQ 0 (GSI 0, as the in-kernel
    /// PIT raises it), which the MADT's override puts on pin 2; GSIs 16-23
    /// to the IOAPIC alone. KVM's default table has IRQ 0 on pin 0.
    static let gsiRouting: [RoutingEntry] = {
        var routes: [RoutingEntry] = []
        for irq in UInt32(0)..<16 where irq != 2 {
            routes.append(.irqchip(gsi: irq, irq < 8 ? .picMaster : .picSlave, pin: irq & 7))
        }
        for gsi in UInt32(0)..<24 where gsi != 2 {
            routes.append(.irqchip(gsi: gsi, .ioapic, pin: gsi == 0 ? 2 : gsi))
        }
        return routes
    }()

    deinit { legacy?.timer.stop() }

    /// The host presses the power button: the guest's ACPI driver sees it
    /// (PWRBTN_STS, and the SCI if it enabled the event) and shuts down.
    public func pressPowerButton() {
        withDevices { legacy?.powerManagement.pressPowerButton() }
    }

    /// Starts one thread per vCPU, and the devices' timer. Call once.
    public func start() {
        guard !started.exchange(true, ordering: .sequentiallyConsistent) else { return }
        legacy?.timer.start()
        for vcpu in vcpus {
            control.threadStarted()
            // The thread drops the machine and the vCPU before it reports its
            // end, so that once `wait` returns, releasing the machine closes
            // its descriptors even while Foundation still holds the Thread.
            let references = ThreadReferences(machine: self, vcpu: vcpu)
            let control = self.control
            let thread = Thread {
                if let machine = references.machine, let vcpu = references.vcpu { machine.runLoop(vcpu) }
                references.clear()
                control.threadEnded()
            }
            thread.name = "vCPU \(vcpu.id)"
            thread.start()
        }
    }

    /// Ends the machine from the host: its outcome is `.stopped` unless it had already ended.
    public func stop() {
        control.finish(.success(.stopped))
    }

    /// Blocks until the machine has ended and all its vCPU threads with it.
    public func wait() throws(MachineError) -> MachineOutcome {
        try control.wait().get()
    }

    /// `wait` for at most `timeout` seconds; nil when the machine still runs.
    public func wait(timeout: Double) throws(MachineError) -> MachineOutcome? {
        try control.wait(timeout: timeout)?.get()
    }

    /// `start` then `wait`.
    public func run() throws(MachineError) -> MachineOutcome {
        start()
        return try wait()
    }

    /// vCPU threads still running.
    public var runningThreadCount: Int { control.threadCount }

    private func runLoop(_ vcpu: VCPU) {
        while !control.stopping.load(ordering: .relaxed) {
            let exit: VCPUExit
            do {
                exit = try vcpu.run()
            } catch {
                control.finish(.failure(.kvm(error)))
                return
            }
            switch exit {
            case .io(let io):
                handle(io, on: vcpu)
            case .mmio(let access):
                deviceLock.lock()
                if access.isWrite {
                    mmio.write(access.address, size: Int(access.length), value: access.value)
                    deviceLock.unlock()
                } else {
                    let value = mmio.read(access.address, size: Int(access.length))
                    deviceLock.unlock()
                    answer(vcpu, value)
                }
            case .interrupted, .halt, .irqWindowOpen:
                continue
            case .shutdown:
                control.finish(.failure(.shutdown(vcpu: vcpu.id, rip: try? vcpu.registers().rip)))
            case .internalError(let error):
                control.finish(.failure(.internalError(vcpu: vcpu.id, rip: try? vcpu.registers().rip, error)))
            case .systemEvent(let event):
                switch event.type {
                case 1: control.finish(.success(.poweredOff))  // KVM_SYSTEM_EVENT_SHUTDOWN
                case 2: control.finish(.success(.reset))  // KVM_SYSTEM_EVENT_RESET
                default: control.finish(.failure(.guestCrash(vcpu: vcpu.id, rip: try? vcpu.registers().rip)))
                }
            default:
                control.finish(.failure(.unexpectedExit(vcpu: vcpu.id, rip: try? vcpu.registers().rip, exit)))
            }
        }
    }

    private func handle(_ io: PortIO, on vcpu: VCPU) {
        let port = UInt64(io.port), size = Int(io.size)
        if io.direction == .out {
            deviceLock.lock()
            if io.count == 1 {
                ports.write(port, size: size, value: UInt64(io.value))
            } else {
                var index = 0
                let data = io.stringData
                while index + size <= data.count {
                    var value: UInt64 = 0
                    for byte in 0..<size { value |= UInt64(data[index + byte]) << (8 * UInt64(byte)) }
                    ports.write(port, size: size, value: value)
                    index += size
                }
            }
            deviceLock.unlock()
            return
        }
        if io.count == 1 {
            deviceLock.lock()
            let value = ports.read(port, size: size)
            deviceLock.unlock()
            answer(vcpu, value)
            return
        }
        // String input (`rep insb`): rare, so an array is fine here.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(io.length)
        deviceLock.lock()
        for _ in 0..<io.count {
            let value = ports.read(port, size: size)
            for byte in 0..<size { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(byte)))) }
        }
        deviceLock.unlock()
        do { try vcpu.setInput(bytes) } catch { control.finish(.failure(.kvm(error))) }
    }

    private func answer(_ vcpu: VCPU, _ value: UInt64) {
        do { try vcpu.setInput(value) } catch { control.finish(.failure(.kvm(error))) }
    }
}

