import Accelerators
import ArgumentParser
import KVM

/// `swiftkvm info`: which accelerators this machine has, and what the
/// chosen one supports.
struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the accelerators present and what the chosen one supports.")

    @OptionGroup var acceleratorOptions: AcceleratorOptions

    func run() throws {
        print("Accelerators")
        var usable: [Accelerator: Hypervisor] = [:]
        for accelerator in [Accelerator.host, .soft] {
            do {
                let hypervisor = try Hypervisor.open(accelerator)
                usable[accelerator] = hypervisor
                print("  \(pad(accelerator.rawValue, 6))usable")
            } catch {
                print("  \(pad(accelerator.rawValue, 6))not usable: \(error.message)")
            }
        }
        let hostKind = HostKVMKind.probe()
        print("  host KVM runs guests with \(hostKind)")
        print()

        let chosen = acceleratorOptions.accel == .automatic
            ? ((hostKind.isPreferredOverSoft ? usable[.host] : nil) ?? usable[.soft])
            : usable[acceleratorOptions.accel]
        guard let hypervisor = chosen else {
            printError("no usable accelerator for --accel \(acceleratorOptions.accel)")
            throw ExitCode.failure
        }
        do {
            try describe(hypervisor)
        } catch {
            printError("\(error)")
            throw ExitCode.failure
        }
    }

    private func describe(_ hypervisor: Hypervisor) throws(KVMError) {
        print("Accelerator \(hypervisor.accelerator)")
        let mmapSize = try hypervisor.vcpuMmapSize()
        let cpuid = try hypervisor.supportedCPUID()
        let msrs = try hypervisor.msrIndexList()
        let featureMSRs = (try? hypervisor.msrFeatureIndexList())?.count
        let rows: [(String, String)] = [
            ("API version", "\(try hypervisor.apiVersion())"),
            ("vCPU mmap size", "\(mmapSize) bytes (\(mmapSize / 4096) pages)"),
            ("vCPUs, recommended", "\(try hypervisor.checkExtension(.nrVCPUs)) (KVM_CAP_NR_VCPUS)"),
            ("vCPUs, maximum", "\(try hypervisor.checkExtension(.maxVCPUs)) (KVM_CAP_MAX_VCPUS)"),
            ("vCPU ids", "below \(try hypervisor.checkExtension(.maxVCPUID)) (KVM_CAP_MAX_VCPU_ID)"),
            ("memory slots", "\(try hypervisor.checkExtension(.nrMemslots)) (KVM_CAP_NR_MEMSLOTS)"),
            ("supported CPUID leaves", "\(cpuid.count) (KVM_GET_SUPPORTED_CPUID)"),
            ("MSRs", "\(msrs.count) (KVM_GET_MSR_INDEX_LIST)"),
            ("feature MSRs", featureMSRs.map { "\($0) (KVM_GET_MSR_FEATURE_INDEX_LIST)" } ?? "not reported"),
        ]
        for (name, value) in rows {
            print("  \(pad(name, 24))\(value)")
        }
        print()

        let values = Capability.named.map { entry in
            (name: entry.name, value: Result { () throws(KVMError) in try hypervisor.checkExtension(entry.capability) })
        }
        let supported = values.filter { (try? $0.value.get()).map { $0 != 0 } ?? false }
        let unsupported = values.filter { !((try? $0.value.get()).map { $0 != 0 } ?? false) }
        let width = (values.map(\.name.count).max() ?? 0) + 2
        print("Capabilities (KVM_CHECK_EXTENSION on the system descriptor): \(supported.count) of \(values.count) supported")
        print("  \(pad("supported", width + 2))value")
        for entry in supported {
            print("    \(pad(entry.name, width))\(format(entry.value))")
        }
        print("  not supported")
        for entry in unsupported {
            print("    \(pad(entry.name, width))\(format(entry.value))")
        }
    }

    private func format(_ value: Result<Int32, KVMError>) -> String {
        switch value {
        case .success(let number) where number >= 16:
            return "\(number) (0x\(String(number, radix: 16)))"
        case .success(let number):
            return "\(number)"
        case .failure(let error):
            return "error: \(error)"
        }
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}
